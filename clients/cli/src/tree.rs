//! `taskwire watch --tree`: a bar per task of a tree, each under its parent, from one
//! WatchTask stream with `tree` (its events name their task's parent and kind).

use std::collections::HashMap;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use taskwire::pb::v1::{TaskEvent, TaskState};

use crate::output;

/// The bars of a watched tree.
pub struct TreeView {
    multi: MultiProgress,
    nodes: HashMap<String, Node>,
}

struct Node {
    bar: ProgressBar,
    depth: usize,
    parent: Option<String>,
    /// The bar of its last descendant shown: a new child goes after it.
    last: ProgressBar,
}

impl TreeView {
    /// A view drawn on the terminal, or drawing nothing (`hidden`, for --json).
    pub fn new(hidden: bool) -> Self {
        let target = if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            nodes: HashMap::new(),
        }
    }

    /// Shows one event on its task's bar (made, under its parent, on its first event).
    pub fn show(&mut self, e: &TaskEvent) {
        if !self.nodes.contains_key(&e.task_id) {
            self.add(e);
        }
        let bar = &self.nodes[&e.task_id].bar;
        if let Some(p) = &e.progress {
            bar.set_position((p.fraction * 1000.0) as u64);
        }
        let state = output::short_state(e.state);
        let detail = e
            .progress
            .as_ref()
            .map(|p| p.message.as_str())
            .filter(|m| !m.is_empty())
            .or_else(|| e.error.as_ref().map(|e| e.code.as_str()))
            .unwrap_or("");
        bar.set_message(format!("{state} {detail}"));
        if e.state == TaskState::Succeeded as i32 {
            bar.set_position(1000);
        }
    }

    fn add(&mut self, e: &TaskEvent) {
        let parent = Some(e.parent_id.clone()).filter(|p| self.nodes.contains_key(p));
        let depth = parent.as_ref().map_or(0, |p| self.nodes[p].depth + 1);
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        // A UUIDv7 starts with its time: siblings differ at the end.
        let short = e
            .task_id
            .get(e.task_id.len().saturating_sub(8)..)
            .unwrap_or(&e.task_id);
        bar.set_prefix(format!("{}{:<14} {short}", "  ".repeat(depth), e.kind));
        let bar = match &parent {
            Some(p) => self.multi.insert_after(&self.nodes[p].last, bar),
            None => self.multi.add(bar),
        };
        // It is now the last descendant shown of each of its ancestors.
        let mut up = parent.clone();
        while let Some(id) = up {
            let node = self.nodes.get_mut(&id).expect("ancestors are shown");
            node.last = bar.clone();
            up = node.parent.clone();
        }
        self.nodes.insert(
            e.task_id.clone(),
            Node {
                last: bar.clone(),
                bar,
                depth,
                parent,
            },
        );
    }

    /// Prints a line above the bars.
    pub fn println(&self, line: &str) {
        let _ = self.multi.println(line);
    }

    /// Leaves the bars as they ended.
    pub fn finish(&self) {
        for n in self.nodes.values() {
            n.bar.abandon();
        }
    }
}
