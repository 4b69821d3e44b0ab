//! A list answered page by page from one view of the store.
//!
//! The ids are taken when the list is asked for; each object is read (and
//! copied) only when its page is made, as the client takes the pages. A
//! list of any size then costs its ids and one page of memory, not a copy
//! of every object at once, and all of it is read from one version.

use shoal_store::{Tables, View};

/// Encoded bytes of one page of a list at most (unless one object alone is
/// larger): well under the 16 MiB a message may carry.
pub(crate) const MAX_PAGE_BYTES: usize = 4 << 20;

type Read<T> = Box<dyn Fn(&Tables, &str) -> Option<T> + Send + Sync>;

/// The pages of one list: at least one item each, one empty page for an
/// empty list (a client always gets an answer).
pub struct Pages<T, R> {
    view: View,
    ids: std::vec::IntoIter<String>,
    read: Read<T>,
    wrap: fn(Vec<T>) -> R,
    /// The item that did not fit in the last page: the next one starts
    /// with it.
    carried: Option<(T, usize)>,
    answered: bool,
}

impl<T: prost::Message, R> Pages<T, R> {
    /// The pages of the objects `ids` names, each read from `view` by
    /// `read` (an object gone from the view, or filtered out by `read`, is
    /// skipped), each page made by `wrap`.
    pub(crate) fn new(
        view: View,
        ids: Vec<String>,
        read: impl Fn(&Tables, &str) -> Option<T> + Send + Sync + 'static,
        wrap: fn(Vec<T>) -> R,
    ) -> Pages<T, R> {
        Pages {
            view,
            ids: ids.into_iter(),
            read: Box::new(read),
            wrap,
            carried: None,
            answered: false,
        }
    }
}

impl<T: prost::Message, R> Iterator for Pages<T, R> {
    type Item = R;

    fn next(&mut self) -> Option<R> {
        let mut page = Vec::new();
        let mut bytes = 0;
        if let Some((item, size)) = self.carried.take() {
            page.push(item);
            bytes = size;
        }
        for id in self.ids.by_ref() {
            let Some(item) = (self.read)(&self.view, &id) else {
                continue;
            };
            let size = item.encoded_len();
            if !page.is_empty() && bytes + size > MAX_PAGE_BYTES {
                self.carried = Some((item, size));
                break;
            }
            bytes += size;
            page.push(item);
        }
        if page.is_empty() && self.answered {
            return None;
        }
        self.answered = true;
        Some((self.wrap)(page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::{Annotations, Node, NodeSpec};

    fn node(id: &str, label_bytes: usize) -> Node {
        Node {
            id: id.into(),
            spec: Some(NodeSpec {
                annotations: Some(Annotations {
                    name: String::new(),
                    labels: [("l".to_string(), "x".repeat(label_bytes))].into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pages_of(nodes: Vec<Node>) -> Vec<Vec<Node>> {
        let ids = nodes.iter().map(|n| n.id.clone()).collect();
        let by_id: std::collections::HashMap<String, Node> =
            nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
        let view = View::default();
        Pages::new(view, ids, move |_, id| by_id.get(id).cloned(), |p| p).collect()
    }

    #[test]
    fn pages_stay_under_the_cap_keep_the_order_and_an_empty_list_gets_one_empty_page() {
        assert_eq!(pages_of(Vec::new()), vec![Vec::<Node>::new()]);
        let nodes: Vec<Node> = (0..10).map(|i| node(&format!("n{i}"), 1 << 20)).collect();
        let pages = pages_of(nodes.clone());
        assert!(pages.len() >= 3, "{} pages", pages.len());
        for page in &pages {
            let bytes: usize = page.iter().map(prost::Message::encoded_len).sum();
            assert!(!page.is_empty());
            assert!(bytes <= MAX_PAGE_BYTES, "{bytes}");
        }
        let flat: Vec<Node> = pages.into_iter().flatten().collect();
        assert_eq!(flat, nodes);
        // One object over the cap still travels, alone.
        let big = pages_of(vec![
            node("a", 1),
            node("b", MAX_PAGE_BYTES + 1),
            node("c", 1),
        ]);
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }
}
