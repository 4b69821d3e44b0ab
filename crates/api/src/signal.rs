//! Stop signals by name, as `--stop-signal` takes them: `SIGTERM`, `TERM`
//! or `15`. One table, so the control API refuses exactly what an agent
//! could not send.

/// Linux's signals a stop may send, by name without the `SIG` prefix.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The number of a signal given by name (`SIGTERM`, `term`) or number
/// (`15`, up to the real-time signals' 64); `None` for an empty or unknown
/// one.
pub fn number(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_is_known_by_its_name_with_or_without_sig_or_its_number() {
        assert_eq!(number("SIGTERM"), Some(15));
        assert_eq!(number("term"), Some(15));
        assert_eq!(number("SIGUSR1"), Some(10));
        assert_eq!(number("9"), Some(9));
        assert_eq!(number(""), None);
        assert_eq!(number("SIGNOPE"), None);
        assert_eq!(number("0"), None);
        assert_eq!(number("65"), None);
    }
}
