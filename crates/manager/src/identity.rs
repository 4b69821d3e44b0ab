//! Object ids: 25 random base-36 characters, as SwarmKit makes them.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Length of every object id.
pub const ID_LEN: usize = 25;

/// A fresh object id from `rng`. 36^25 ≈ 2^129: collisions are not a concern,
/// and the store refuses a duplicate id anyway.
pub fn new_object_id(rng: &mut impl Rng) -> String {
    (0..ID_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ids_are_25_base36_characters() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let id = new_object_id(&mut rng);
        assert_eq!(id.len(), ID_LEN);
        assert!(id.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(id, new_object_id(&mut rng));
    }
}
