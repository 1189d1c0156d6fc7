//! Merkle Search Tree: the ordered key → CID map behind every repository.
//!
//! The tree is loaded lazily from a [`BlockSource`]: a node is decoded only when an
//! operation has to look inside it, so a commit's partial tree (the blocks in its
//! CAR) is enough to run the operations the commit claims, and to run them in
//! reverse (inversion, Sync 1.1). An operation that needs a block the source does
//! not have fails with [`MstError::MissingBlock`]: for a commit that means its
//! proof is incomplete.
//!
//! Layout: a node at height `h` holds leaves whose key height is `h`, interleaved
//! with subtrees of height `h - 1`; no two subtrees are adjacent. Key height is the
//! number of leading zero bits of SHA-256(key) divided by 2 (fanout 4).

use crate::cbor;

mod codec;
use cid::Cid;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// Where MST node blocks come from.
pub trait BlockSource {
    fn get_block(&self, cid: &Cid) -> Option<&[u8]>;
}

impl BlockSource for HashMap<Cid, Vec<u8>> {
    fn get_block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid).map(Vec::as_slice)
    }
}

impl BlockSource for crate::car::Car<'_> {
    fn get_block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid)
    }
}

/// Wraps a source and remembers every block read: the blocks an operation needed.
pub struct RecordingSource<'s, S: BlockSource> {
    pub inner: &'s S,
    pub read: RefCell<HashSet<Cid>>,
}

impl<'s, S: BlockSource> RecordingSource<'s, S> {
    pub fn new(inner: &'s S) -> Self {
        RecordingSource { inner, read: RefCell::new(HashSet::new()) }
    }
}

impl<S: BlockSource> BlockSource for RecordingSource<'_, S> {
    fn get_block(&self, cid: &Cid) -> Option<&[u8]> {
        self.read.borrow_mut().insert(*cid);
        self.inner.get_block(cid)
    }
}

/// The source with no blocks, for trees built from scratch.
pub struct NoBlocks;

impl BlockSource for NoBlocks {
    fn get_block(&self, _cid: &Cid) -> Option<&[u8]> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MstError {
    #[error("MST block {0} is not in the proof")]
    MissingBlock(Cid),
    #[error("MST node {0} does not decode: {1}")]
    BadNode(Cid, String),
    #[error("MST node {0} is malformed: {1}")]
    Structure(Cid, &'static str),
    #[error("MST key is not a valid repo path")]
    BadKey,
}

/// Height of a key in the tree.
pub fn key_height(key: &[u8]) -> u8 {
    let digest = Sha256::digest(key);
    let mut zeros = 0u32;
    for byte in digest {
        if byte == 0 {
            zeros += 8;
            continue;
        }
        zeros += byte.leading_zeros();
        break;
    }
    (zeros / 2) as u8
}

/// Length of the common byte prefix of two keys.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[derive(Debug, Clone)]
enum Child {
    Stub(Cid),
    Loaded(Box<Node>),
}

#[derive(Debug, Clone)]
struct Leaf {
    key: Vec<u8>,
    value: Cid,
}

#[derive(Debug, Clone)]
enum Item {
    Tree(Child),
    Leaf(Leaf),
}

#[derive(Debug, Clone)]
struct Node {
    height: u8,
    items: Vec<Item>,
    /// The node's CID while it is unchanged since load or last hash; `None` = dirty.
    cid: Option<Cid>,
}

impl Node {
    fn empty(height: u8) -> Node {
        Node { height, items: Vec::new(), cid: None }
    }

    fn has_leaves(&self) -> bool {
        self.items.iter().any(|item| matches!(item, Item::Leaf(_)))
    }

    /// Index of the first leaf whose key is greater than `key`, or `items.len()`.
    fn upper_bound(&self, key: &[u8]) -> usize {
        self.items
            .iter()
            .position(|item| matches!(item, Item::Leaf(leaf) if leaf.key.as_slice() > key))
            .unwrap_or(self.items.len())
    }

    fn leaf_index(&self, key: &[u8]) -> Option<usize> {
        self.items.iter().position(|item| matches!(item, Item::Leaf(leaf) if leaf.key == key))
    }

    /// The subtree just before `index`, if the item there is a subtree.
    fn tree_before(&self, index: usize) -> Option<usize> {
        let before = index.checked_sub(1)?;
        matches!(self.items[before], Item::Tree(_)).then_some(before)
    }
}

fn decode_node(cid: &Cid, bytes: &[u8], expected_height: Option<u8>) -> Result<Node, MstError> {
    let data = codec::decode(bytes).map_err(|e| MstError::BadNode(*cid, e))?;
    let mut items = Vec::with_capacity(data.entries.len() * 2 + 1);
    if let Some(left) = data.left {
        items.push(Item::Tree(Child::Stub(left)));
    }
    let mut height = expected_height;
    let mut leaves: Vec<(Vec<u8>, Cid, Option<Cid>)> = Vec::with_capacity(data.entries.len());
    for entry in data.entries {
        let previous: &[u8] = leaves.last().map_or(&[], |(key, _, _)| key.as_slice());
        let prefix = usize::try_from(entry.prefix).unwrap_or(usize::MAX);
        if prefix > previous.len() || (leaves.is_empty() && prefix != 0) {
            return Err(MstError::Structure(*cid, "prefix length longer than the previous key"));
        }
        let mut key = Vec::with_capacity(prefix + entry.suffix.len());
        key.extend_from_slice(&previous[..prefix]);
        key.extend_from_slice(entry.suffix);
        if !leaves.is_empty() {
            if key.as_slice() <= previous {
                return Err(MstError::Structure(*cid, "keys not strictly increasing"));
            }
            if common_prefix_len(previous, &key) != prefix {
                return Err(MstError::Structure(*cid, "prefix compression not maximal"));
            }
        }
        check_key(&key)?;
        let this_height = key_height(&key);
        if *height.get_or_insert(this_height) != this_height {
            return Err(MstError::Structure(*cid, "key height does not match the node's layer"));
        }
        leaves.push((key, entry.value, entry.right));
    }
    for (key, value, right) in leaves {
        items.push(Item::Leaf(Leaf { key, value }));
        if let Some(right) = right {
            items.push(Item::Tree(Child::Stub(right)));
        }
    }
    let height = match height {
        Some(h) => h,
        None if items.is_empty() => 0,
        None => return Err(MstError::Structure(*cid, "top node has no keys, only a subtree")),
    };
    if height == 0 && items.iter().any(|item| matches!(item, Item::Tree(_))) {
        return Err(MstError::Structure(*cid, "subtree below the lowest layer"));
    }
    Ok(Node { height, items, cid: Some(*cid) })
}

fn check_key(key: &[u8]) -> Result<(), MstError> {
    // `<collection>/<rkey>`: one slash with something on both sides, ASCII path characters.
    let mut slashes = 0;
    for &b in key {
        match b {
            b'/' => slashes += 1,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'~' | b':' => {}
            _ => return Err(MstError::BadKey),
        }
    }
    let valid = slashes == 1 && key.len() <= 1024 && key.first() != Some(&b'/') && key.last() != Some(&b'/');
    if valid {
        Ok(())
    } else {
        Err(MstError::BadKey)
    }
}

fn load_child<S: BlockSource>(child: &mut Child, height: u8, store: &S) -> Result<(), MstError> {
    if let Child::Stub(cid) = child {
        let cid = *cid;
        let bytes = store.get_block(&cid).ok_or(MstError::MissingBlock(cid))?;
        let node = decode_node(&cid, bytes, Some(height))?;
        if node.items.is_empty() {
            return Err(MstError::Structure(cid, "empty node below the top"));
        }
        *child = Child::Loaded(Box::new(node));
    }
    Ok(())
}

/// Loads the subtree at `items[index]` and returns it.
fn subtree_mut<'n, S: BlockSource>(
    node: &'n mut Node,
    index: usize,
    store: &S,
) -> Result<&'n mut Node, MstError> {
    let height = node.height.saturating_sub(1);
    let Item::Tree(child) = &mut node.items[index] else {
        unreachable!("subtree_mut is only called on subtree items");
    };
    load_child(child, height, store)?;
    match child {
        Child::Loaded(inner) => Ok(inner),
        Child::Stub(_) => unreachable!("load_child replaced the stub"),
    }
}

fn take_subtree<S: BlockSource>(item: Item, height: u8, store: &S) -> Result<Node, MstError> {
    match item {
        Item::Tree(mut child) => {
            load_child(&mut child, height, store)?;
            match child {
                Child::Loaded(node) => Ok(*node),
                Child::Stub(_) => unreachable!("load_child replaced the stub"),
            }
        }
        Item::Leaf(_) => unreachable!("take_subtree is only called on subtree items"),
    }
}

fn get<S: BlockSource>(node: &mut Node, key: &[u8], store: &S) -> Result<Option<Cid>, MstError> {
    if let Some(index) = node.leaf_index(key) {
        if let Item::Leaf(leaf) = &node.items[index] {
            return Ok(Some(leaf.value));
        }
    }
    let bound = node.upper_bound(key);
    match node.tree_before(bound) {
        Some(index) => get(subtree_mut(node, index, store)?, key, store),
        None => Ok(None),
    }
}

fn insert<S: BlockSource>(
    node: &mut Node,
    key: &[u8],
    value: Cid,
    height: u8,
    store: &S,
) -> Result<Option<Cid>, MstError> {
    if height == node.height {
        if let Some(index) = node.leaf_index(key) {
            let Item::Leaf(leaf) = &mut node.items[index] else { unreachable!() };
            let old = std::mem::replace(&mut leaf.value, value);
            node.cid = None;
            return Ok(Some(old));
        }
        let bound = node.upper_bound(key);
        let leaf = Item::Leaf(Leaf { key: key.to_vec(), value });
        match node.tree_before(bound) {
            Some(index) => {
                let straddling = node.items.remove(index);
                let subtree = take_subtree(straddling, node.height - 1, store)?;
                let (left, right) = split(subtree, key, store)?;
                let mut replacement = Vec::with_capacity(3);
                replacement.extend(left.map(|n| Item::Tree(Child::Loaded(Box::new(n)))));
                replacement.push(leaf);
                replacement.extend(right.map(|n| Item::Tree(Child::Loaded(Box::new(n)))));
                node.items.splice(index..index, replacement);
            }
            None => node.items.insert(bound, leaf),
        }
        node.cid = None;
        return Ok(None);
    }
    // height < node.height: the key lives in the subtree between the neighbouring leaves.
    let bound = node.upper_bound(key);
    let previous = match node.tree_before(bound) {
        Some(index) => insert(subtree_mut(node, index, store)?, key, value, height, store)?,
        None => {
            let mut child = Node::empty(node.height - 1);
            insert(&mut child, key, value, height, store)?;
            node.items.insert(bound, Item::Tree(Child::Loaded(Box::new(child))));
            None
        }
    };
    node.cid = None;
    Ok(previous)
}

/// Splits a subtree around `key` (which it does not contain) into the parts below and above.
fn split<S: BlockSource>(
    mut node: Node,
    key: &[u8],
    store: &S,
) -> Result<(Option<Node>, Option<Node>), MstError> {
    let bound = node.upper_bound(key);
    // A side that keeps all items keeps the node (and its CID) unchanged.
    if bound == 0 {
        return Ok((None, Some(node)));
    }
    if bound == node.items.len() && matches!(node.items.last(), Some(Item::Leaf(_))) {
        return Ok((Some(node), None));
    }
    let original_cid = node.cid;
    let mut right_items = node.items.split_off(bound);
    let mut left_items = node.items;
    let mut unchanged = right_items.is_empty();
    if matches!(left_items.last(), Some(Item::Tree(_))) {
        let straddling = left_items.pop().expect("checked non-empty");
        let subtree = take_subtree(straddling, node.height - 1, store)?;
        let (lower, upper) = split(subtree, key, store)?;
        // The key may lie beyond every key of the subtree: then nothing moved.
        unchanged &= upper.is_none() && lower.as_ref().is_some_and(|n| n.cid.is_some());
        left_items.extend(lower.map(|n| Item::Tree(Child::Loaded(Box::new(n)))));
        if let Some(n) = upper {
            right_items.insert(0, Item::Tree(Child::Loaded(Box::new(n))));
        }
    }
    let wrap = |items: Vec<Item>, cid: Option<Cid>| {
        (!items.is_empty()).then_some(Node { height: node.height, items, cid })
    };
    let left_cid = if unchanged { original_cid } else { None };
    Ok((wrap(left_items, left_cid), wrap(right_items, None)))
}

fn remove<S: BlockSource>(
    node: &mut Node,
    key: &[u8],
    height: u8,
    store: &S,
) -> Result<Option<Cid>, MstError> {
    if height > node.height {
        return Ok(None);
    }
    if height == node.height {
        let Some(index) = node.leaf_index(key) else {
            return Ok(None);
        };
        let Item::Leaf(leaf) = node.items.remove(index) else { unreachable!() };
        let both_trees = index > 0
            && index < node.items.len()
            && matches!(node.items[index - 1], Item::Tree(_))
            && matches!(node.items[index], Item::Tree(_));
        if both_trees {
            let right = node.items.remove(index);
            let left = node.items.remove(index - 1);
            let child_height = node.height - 1;
            let merged = merge(
                take_subtree(left, child_height, store)?,
                take_subtree(right, child_height, store)?,
                store,
            )?;
            node.items.insert(index - 1, Item::Tree(Child::Loaded(Box::new(merged))));
        }
        node.cid = None;
        return Ok(Some(leaf.value));
    }
    let bound = node.upper_bound(key);
    let Some(index) = node.tree_before(bound) else {
        return Ok(None);
    };
    let child = subtree_mut(node, index, store)?;
    let removed = remove(child, key, height, store)?;
    if removed.is_some() {
        if child.items.is_empty() {
            node.items.remove(index);
        }
        node.cid = None;
    }
    Ok(removed)
}

/// Joins two adjacent subtrees of the same height (all keys of `left` < all of `right`).
fn merge<S: BlockSource>(mut left: Node, mut right: Node, store: &S) -> Result<Node, MstError> {
    let joinable = matches!(left.items.last(), Some(Item::Tree(_)))
        && matches!(right.items.first(), Some(Item::Tree(_)));
    if joinable {
        let child_height = left.height - 1;
        let inner_left = take_subtree(left.items.pop().expect("checked"), child_height, store)?;
        let inner_right = take_subtree(right.items.remove(0), child_height, store)?;
        let inner = merge(inner_left, inner_right, store)?;
        left.items.push(Item::Tree(Child::Loaded(Box::new(inner))));
    }
    left.items.append(&mut right.items);
    left.cid = None;
    Ok(left)
}

fn node_cid(node: &mut Node, blocks: &mut Option<&mut Vec<(Cid, Vec<u8>)>>) -> Cid {
    if let Some(cid) = node.cid {
        return cid;
    }
    // Children first (post-order), so the entries below can borrow the keys.
    for item in node.items.iter_mut() {
        if let Item::Tree(child) = item {
            child_cid(child, blocks);
        }
    }
    let mut entries: Vec<codec::RawEntry> = Vec::with_capacity(node.items.len());
    let mut left = None;
    let mut previous: &[u8] = &[];
    for item in &node.items {
        match item {
            Item::Tree(child) => {
                let cid = known_cid(child);
                match entries.last_mut() {
                    Some(entry) => entry.right = Some(cid),
                    None => left = Some(cid),
                }
            }
            Item::Leaf(leaf) => {
                let prefix = common_prefix_len(previous, &leaf.key);
                entries.push(codec::RawEntry {
                    prefix: prefix as u64,
                    suffix: &leaf.key[prefix..],
                    value: leaf.value,
                    right: None,
                });
                previous = &leaf.key;
            }
        }
    }
    let bytes = codec::encode(left.as_ref(), &entries);
    let cid = cbor::cid_for_cbor(&bytes);
    if let Some(out) = blocks.as_mut() {
        out.push((cid, bytes));
    }
    node.cid = Some(cid);
    cid
}

/// The CID of a child already hashed by `child_cid`.
fn known_cid(child: &Child) -> Cid {
    match child {
        Child::Stub(cid) => *cid,
        Child::Loaded(node) => node.cid.expect("children are hashed before their parent"),
    }
}

fn child_cid(child: &mut Child, blocks: &mut Option<&mut Vec<(Cid, Vec<u8>)>>) -> Cid {
    match child {
        Child::Stub(cid) => *cid,
        Child::Loaded(node) => node_cid(node, blocks),
    }
}

fn collect_leaves<S: BlockSource>(
    node: &mut Node,
    store: &S,
    out: &mut Vec<(Vec<u8>, Cid)>,
) -> Result<(), MstError> {
    for index in 0..node.items.len() {
        if matches!(node.items[index], Item::Tree(_)) {
            collect_leaves(subtree_mut(node, index, store)?, store, out)?;
        } else if let Item::Leaf(leaf) = &node.items[index] {
            out.push((leaf.key.clone(), leaf.value));
        }
    }
    Ok(())
}

/// Adds the CID of `node` (hashed), of every node below it and of every leaf value.
fn collect_reachable<S: BlockSource>(
    node: &mut Node,
    store: &S,
    out: &mut HashSet<Cid>,
) -> Result<(), MstError> {
    out.insert(node_cid(node, &mut None));
    for index in 0..node.items.len() {
        if matches!(node.items[index], Item::Tree(_)) {
            collect_reachable(subtree_mut(node, index, store)?, store, out)?;
        } else if let Item::Leaf(leaf) = &node.items[index] {
            out.insert(leaf.value);
        }
    }
    Ok(())
}

/// The nearest keys below and above a key, when there are any.
pub type Neighbors = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The nearest keys below and above `key` (which need not be present), loading only the
/// nodes on the path to where `key` sits: exactly what a Sync 1.1 proof for an op on `key`
/// contains, so the neighbours of a deleted key are decidable from its commit alone.
fn neighbors<S: BlockSource>(node: &mut Node, key: &[u8], store: &S) -> Result<Neighbors, MstError> {
    let bound = node.upper_bound(key);
    // Leaves at or after `bound` are > key; the leaf just before (if it is `key` itself) is skipped.
    let mut above = match node.items.get(bound) {
        Some(Item::Leaf(leaf)) => Some(leaf.key.clone()),
        _ => None,
    };
    let mut below = None;
    let mut index = bound;
    let straddling = node.tree_before(bound);
    if let Some(tree) = straddling {
        let (inner_below, inner_above) = neighbors(subtree_mut(node, tree, store)?, key, store)?;
        if inner_above.is_some() {
            above = inner_above;
        }
        below = inner_below;
        index = tree;
    }
    if below.is_none() {
        // The nearest leaf left of the subtree (or of `bound`) that is not `key` itself.
        below = node.items[..index].iter().rev().find_map(|item| match item {
            Item::Leaf(leaf) if leaf.key.as_slice() < key => Some(leaf.key.clone()),
            _ => None,
        });
        // A subtree between that leaf and `key` would hold nearer keys; it is loaded only when
        // `key` itself sits at `index - 1` (present in the tree), which the walk below handles.
        if let Some(Item::Leaf(leaf)) = index.checked_sub(1).and_then(|i| node.items.get(i)) {
            if leaf.key == key {
                if let Some(tree) = node.tree_before(index - 1) {
                    let last = last_key(subtree_mut(node, tree, store)?, store)?;
                    below = last.or(below);
                }
            }
        }
    }
    Ok((below, above))
}

/// The largest key of a subtree (loads its right edge).
fn last_key<S: BlockSource>(node: &mut Node, store: &S) -> Result<Option<Vec<u8>>, MstError> {
    match node.items.len().checked_sub(1) {
        None => Ok(None),
        Some(index) => match &node.items[index] {
            Item::Leaf(leaf) => Ok(Some(leaf.key.clone())),
            Item::Tree(_) => last_key(subtree_mut(node, index, store)?, store),
        },
    }
}

/// A (possibly partial) MST.
#[derive(Debug, Clone)]
pub struct Mst {
    root: Child,
}

impl Default for Mst {
    fn default() -> Self {
        Mst::empty()
    }
}

impl Mst {
    pub fn empty() -> Mst {
        Mst { root: Child::Loaded(Box::new(Node::empty(0))) }
    }

    /// A tree whose root block will be read from a source on first use.
    pub fn from_root(root: Cid) -> Mst {
        Mst { root: Child::Stub(root) }
    }

    fn root_node<S: BlockSource>(&mut self, store: &S) -> Result<&mut Node, MstError> {
        if let Child::Stub(cid) = self.root {
            let bytes = store.get_block(&cid).ok_or(MstError::MissingBlock(cid))?;
            self.root = Child::Loaded(Box::new(decode_node(&cid, bytes, None)?));
        }
        match &mut self.root {
            Child::Loaded(node) => Ok(node),
            Child::Stub(_) => unreachable!("root loaded above"),
        }
    }

    pub fn get<S: BlockSource>(&mut self, key: &[u8], store: &S) -> Result<Option<Cid>, MstError> {
        let root = self.root_node(store)?;
        get(root, key, store)
    }

    /// Sets `key` to `value`; returns the previous value.
    pub fn insert<S: BlockSource>(
        &mut self,
        key: &[u8],
        value: Cid,
        store: &S,
    ) -> Result<Option<Cid>, MstError> {
        check_key(key)?;
        let height = key_height(key);
        let root = self.root_node(store)?;
        if root.items.is_empty() {
            root.height = height;
        }
        if height <= root.height {
            return insert(root, key, value, height, store);
        }
        // The key belongs above the current top: split the tree around it and
        // put it in a new top node, padding each side with single-subtree nodes.
        let old_root = std::mem::replace(root, Node::empty(height));
        let (left, right) = split(old_root, key, store)?;
        let raise = |mut side: Node| {
            while side.height + 1 < height {
                side = Node {
                    height: side.height + 1,
                    items: vec![Item::Tree(Child::Loaded(Box::new(side)))],
                    cid: None,
                };
            }
            Item::Tree(Child::Loaded(Box::new(side)))
        };
        root.items.extend(left.map(raise));
        root.items.push(Item::Leaf(Leaf { key: key.to_vec(), value }));
        root.items.extend(right.map(raise));
        Ok(None)
    }

    /// Removes `key`; returns the value it had.
    pub fn remove<S: BlockSource>(&mut self, key: &[u8], store: &S) -> Result<Option<Cid>, MstError> {
        let height = key_height(key);
        let root = self.root_node(store)?;
        let removed = remove(root, key, height, store)?;
        if removed.is_some() {
            self.trim_top(store)?;
        }
        Ok(removed)
    }

    /// Drops top nodes that hold nothing but one subtree (they are pruned in a canonical tree).
    fn trim_top<S: BlockSource>(&mut self, store: &S) -> Result<(), MstError> {
        loop {
            let root = self.root_node(store)?;
            if root.items.len() != 1 || root.has_leaves() {
                return Ok(());
            }
            let height = root.height.saturating_sub(1);
            let Some(Item::Tree(mut child)) = root.items.pop() else { unreachable!() };
            load_child(&mut child, height, store)?;
            self.root = child;
        }
    }

    /// The root CID, hashing any changed nodes.
    pub fn root_cid(&mut self) -> Cid {
        child_cid(&mut self.root, &mut None)
    }

    /// The root CID, and the blocks of every node changed since load.
    pub fn root_and_new_blocks(&mut self) -> (Cid, Vec<(Cid, Vec<u8>)>) {
        let mut blocks = Vec::new();
        let cid = child_cid(&mut self.root, &mut Some(&mut blocks));
        (cid, blocks)
    }

    /// The nearest keys strictly below and above `key`, loading only the path to `key`.
    pub fn neighbors<S: BlockSource>(&mut self, key: &[u8], store: &S) -> Result<Neighbors, MstError> {
        let root = self.root_node(store)?;
        neighbors(root, key, store)
    }

    /// Every block the current tree refers to: its nodes and the values of its leaves
    /// (what a writer must keep; anything else in its store is history). Loads the whole tree.
    pub fn reachable<S: BlockSource>(&mut self, store: &S) -> Result<HashSet<Cid>, MstError> {
        let mut out = HashSet::new();
        let root = self.root_node(store)?;
        collect_reachable(root, store, &mut out)?;
        Ok(out)
    }

    /// Every (key, value) in order; loads the whole tree.
    pub fn entries<S: BlockSource>(&mut self, store: &S) -> Result<Vec<(Vec<u8>, Cid)>, MstError> {
        let mut out = Vec::new();
        let root = self.root_node(store)?;
        collect_leaves(root, store, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: u32) -> Cid {
        cbor::cid_for_cbor(&cbor::encode(&n).expect("encode"))
    }

    #[test]
    fn empty_tree_root_is_the_known_cid() {
        // The empty MST is a single node {e: [], l: null}.
        let mut tree = Mst::empty();
        assert_eq!(
            tree.root_cid().to_string(),
            "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
        );
    }

    #[test]
    fn insert_then_remove_restores_the_root() {
        let mut tree = Mst::empty();
        let keys: Vec<String> = (0..300).map(|i| format!("com.example.record/{i:06}")).collect();
        for (i, key) in keys.iter().enumerate() {
            tree.insert(key.as_bytes(), value(i as u32), &NoBlocks).expect("insert");
        }
        let full = tree.root_cid();
        tree.insert(b"com.example.record/zzz", value(9), &NoBlocks).expect("insert");
        assert_ne!(tree.root_cid(), full);
        tree.remove(b"com.example.record/zzz", &NoBlocks).expect("remove");
        assert_eq!(tree.root_cid(), full);
        for key in &keys {
            tree.remove(key.as_bytes(), &NoBlocks).expect("remove");
        }
        assert_eq!(tree.root_cid(), Mst::empty().root_cid());
    }

    #[test]
    fn neighbors_match_the_sorted_key_list() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut tree = Mst::empty();
        let mut keys: Vec<String> = (0..400)
            .map(|i| format!("{}/{:05}", ["app.a", "app.b", "app.c"][i % 3], rng.u32(0..100_000)))
            .collect();
        keys.sort();
        keys.dedup();
        for (i, key) in keys.iter().enumerate() {
            tree.insert(key.as_bytes(), value(i as u32), &NoBlocks).expect("insert");
        }
        // Reload from blocks so the walk goes through stubs like a commit's partial tree.
        let (root, blocks) = tree.root_and_new_blocks();
        let store: HashMap<Cid, Vec<u8>> = blocks.into_iter().collect();
        let mut probes: Vec<String> = keys.clone();
        probes.extend((0..300).map(|_| {
            format!("app.{}/{:05}", ["a", "b", "c", "d", "0"][rng.usize(0..5)], rng.u32(0..100_000))
        }));
        for probe in probes {
            let mut loaded = Mst::from_root(root);
            let (below, above) = loaded.neighbors(probe.as_bytes(), &store).expect("neighbors");
            let want_below =
                keys.iter().rev().find(|k| k.as_str() < probe.as_str()).map(|k| k.as_bytes().to_vec());
            let want_above = keys.iter().find(|k| k.as_str() > probe.as_str()).map(|k| k.as_bytes().to_vec());
            assert_eq!((below, above), (want_below, want_above), "probe {probe}");
        }
    }
}
