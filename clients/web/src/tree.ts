// A task's tree in the detail drawer: the task and its descendants (the children its
// handler started, theirs, ...) nested under their parents, each with its kind, state
// and a live progress bar. It is fed by ONE WatchTask stream with tree = true (main.ts
// owns the stream and its resume cursor): every event names its task's parent and
// kind, so the tree grows as events arrive. A child that has not started yet has no
// event, so when a node starts WAITING its children are listed (ListTasks by
// parent_id) to show the queued ones too.
//
// Built for big trees (a fan-out of 1,000 children): an event updates its node and its
// ancestors' sums in O(depth), and the DOM is touched once per animation frame, only
// for the nodes that changed (new rows are inserted in place, never rebuilt).
import { h } from "./dom";
import { isTerminal, shortId, stateName } from "./format";
import { TaskState, type Task, type TaskEvent } from "./gen/taskwire/v1/task_pb";

/**
 * A parent's progress after its own step that its children make up; its fan-in step
 * makes up the rest. The same split as the server's (Task.progress of a parent,
 * src/store/read.rs tree_progress), so a node's bar agrees with its record.
 */
const CHILDREN_SHARE = 0.9;
/** How soon after a WAITING event its children are listed (the server creates them
 * a moment after that event), and how often again while none is there yet. */
const LIST_DELAYS_MS = [300, 1_000, 2_000, 4_000, 8_000];

interface TreeNode {
  id: string;
  /** Undefined for the root, and for a node whose parent is not known yet. */
  parent: TreeNode | undefined;
  kind: string;
  state: TaskState;
  lastSeq: bigint;
  /** Its own step's progress, as its events report it. */
  own: number;
  /** Its progress when its step started children (its WAITING event): where its
   * children's share starts. Undefined until it waits. */
  p0: number | undefined;
  /** In its fan-in step (it ran again after waiting). */
  fanIn: boolean;
  /** The least its bar shows from now on: a parent's progress never goes back,
   * though a child found later (listed) lowers its children's average. */
  floor: number;
  /** What its bar shows, and what it counts for in its parent's sum. */
  fraction: number;
  counted: number;
  note: string;
  bad: boolean;
  /** Its children in id order (UUIDv7: the order they were created). */
  children: TreeNode[];
  /** Σ of the children's `counted`, and how many are terminal. */
  childSum: number;
  childDone: number;
  /** Its children added since the last render, still to insert into its list. */
  unplaced: TreeNode[];
  placed: boolean;
  listing: "no" | "pending" | "done";
  el: NodeElements;
}

interface NodeElements {
  li: HTMLLIElement;
  toggle: HTMLButtonElement;
  kind: HTMLElement;
  badge: HTMLElement;
  progress: HTMLElement;
  bar: HTMLElement;
  pct: HTMLElement;
  count: HTMLElement;
  note: HTMLElement;
  list: HTMLUListElement;
}

export interface TreeOptions {
  rootId: string;
  /** The root's record (GetStatus): shown until its events arrive. */
  root?: Task;
  /** Every child of a task (ListTasks by parent_id, all pages). */
  listChildren(parentId: string, signal: AbortSignal): Promise<Task[]>;
  /** A node's id was clicked: show that task. */
  open(id: string): void;
  /** The root's bar changed (after a render). */
  onRootProgress?(fraction: number): void;
}

export interface TreeView {
  el: HTMLElement;
  /** One event of the tree stream. */
  apply(ev: TaskEvent): void;
  /** A node's progress as its bar shows it (the tree's, for a parent). */
  fraction(id: string): number | undefined;
  /** Stops timers, listings and renders (the drawer closed). */
  stop(): void;
}

function clamp01(f: number | undefined): number {
  return f !== undefined && Number.isFinite(f) ? Math.min(1, Math.max(0, f)) : 0;
}

export function createTreeView(opts: TreeOptions): TreeView {
  const abort = new AbortController();
  const nodes = new Map<string, TreeNode>();
  const dirty = new Set<TreeNode>();
  const timers = new Set<number>();
  let frame = 0;

  const summary = h("p", { class: "muted small tree-summary", "data-testid": "tree-summary" });
  const rootList = h("ul", { class: "tree", "data-testid": "task-tree" });
  const el = h("div", { class: "tree-wrap" }, summary, rootList);

  // ---------------------------------------------------------------------------
  // The model

  function newNode(id: string, kind: string): TreeNode {
    const node: TreeNode = {
      id, parent: undefined, kind, state: TaskState.UNSPECIFIED, lastSeq: 0n, own: 0, p0: undefined, fanIn: false,
      floor: 0, fraction: 0, counted: 0, note: "", bad: false, children: [], childSum: 0, childDone: 0,
      unplaced: [], placed: false, listing: "no", el: nodeElements(id, kind),
    };
    nodes.set(id, node);
    dirty.add(node);
    return node;
  }

  /** The node of `id`, made the first time it is named, under the node of `parentId`. */
  function nodeOf(id: string, kind: string, parentId: string): TreeNode {
    const node = nodes.get(id) ?? newNode(id, kind);
    if (kind && node.kind !== kind) {
      node.kind = kind;
      dirty.add(node);
    }
    if (id === opts.rootId) return node;
    const parent = parentId ? (nodes.get(parentId) ?? placeholder(parentId)) : (node.parent ?? root);
    if (node.parent !== parent && !isWithin(parent, node)) attach(node, parent);
    return node;
  }

  /** A parent named before any event of its own (its history was cut short): it is
   * somewhere under the root, so it shows there until its own event says where. */
  function placeholder(id: string): TreeNode {
    const node = newNode(id, "");
    attach(node, root);
    return node;
  }

  /** Whether `node` is `ancestor` or under it (a move there would make a cycle). */
  function isWithin(node: TreeNode, ancestor: TreeNode): boolean {
    for (let n: TreeNode | undefined = node; n; n = n.parent) if (n === ancestor) return true;
    return false;
  }

  /** Moves `node` under `parent`, keeping the children in id order and the sums right. */
  function attach(node: TreeNode, parent: TreeNode): void {
    const old = node.parent;
    if (old) {
      const i = old.children.indexOf(node);
      if (i >= 0) old.children.splice(i, 1);
      old.childSum -= node.counted;
      if (isTerminal(node.state)) old.childDone--;
      if (node.placed) node.el.li.remove();
      node.placed = false;
      recompute(old);
    }
    node.parent = parent;
    parent.children.splice(insertionIndex(parent.children, node.id), 0, node);
    parent.childSum += node.counted;
    if (isTerminal(node.state)) parent.childDone++;
    parent.unplaced.push(node);
    dirty.add(parent);
    recompute(parent);
  }

  function insertionIndex(list: TreeNode[], id: string): number {
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid].id < id) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** A node's bar: its own step's progress, or for a parent whose step started
   * children, its tree's (its step, then its children's, then its fan-in's). */
  function treeFraction(n: TreeNode): number {
    if (n.state === TaskState.SUCCEEDED) return 1;
    if (n.p0 === undefined || n.children.length === 0) return clamp01(n.own);
    const p0 = clamp01(n.p0);
    const rest = 1 - p0;
    const f = n.fanIn
      ? p0 + rest * (CHILDREN_SHARE + (1 - CHILDREN_SHARE) * clamp01(n.own))
      : p0 + rest * CHILDREN_SHARE * clamp01(n.childSum / n.children.length);
    n.floor = Math.max(n.floor, f);
    return n.floor;
  }

  /** Recomputes a node's bar and carries the change up to its ancestors (O(depth)). */
  function recompute(n: TreeNode | undefined): void {
    for (let node = n; node; node = node.parent) {
      const fraction = treeFraction(node);
      const counted = isTerminal(node.state) ? 1 : fraction;
      if (fraction !== node.fraction) dirty.add(node);
      node.fraction = fraction;
      if (counted === node.counted) return;
      if (node.parent) node.parent.childSum += counted - node.counted;
      node.counted = counted;
    }
  }

  /** Folds one event into its node; false when the node already has it (by seq). */
  function fold(n: TreeNode, ev: TaskEvent): boolean {
    if (ev.seq !== 0n && ev.seq <= n.lastSeq) return false;
    const was = n.state;
    if (was === TaskState.FAILED && n.lastSeq > 0n) {
      // A new run (RetryTask): it starts over from its first step.
      n.own = 0;
      n.p0 = undefined;
      n.fanIn = false;
      n.floor = 0;
    }
    if (ev.seq > n.lastSeq) n.lastSeq = ev.seq;
    setState(n, ev.state);
    if (ev.state === TaskState.WAITING) {
      n.p0 = ev.progress?.fraction ?? n.own;
      n.fanIn = false;
    } else if (was === TaskState.WAITING && !isTerminal(ev.state)) {
      n.fanIn = true;
    }
    if (ev.progress) n.own = ev.progress.fraction;
    else if (ev.state === TaskState.RUNNING && was !== TaskState.RUNNING) n.own = 0;
    if (ev.error) {
      n.note = `${ev.error.code}: ${ev.error.message}`;
      n.bad = true;
    } else if (ev.message || ev.progress?.message) {
      n.note = ev.message || ev.progress?.message || "";
      n.bad = false;
    }
    return true;
  }

  /** Sets a node's state, keeping its parent's count of terminal children right. */
  function setState(n: TreeNode, state: TaskState): void {
    if (n.parent && isTerminal(n.state) !== isTerminal(state)) n.parent.childDone += isTerminal(state) ? 1 : -1;
    if (n.parent && n.state !== state) dirty.add(n.parent);
    n.state = state;
  }

  function apply(ev: TaskEvent): void {
    const node = nodeOf(ev.taskId, ev.kind, ev.parentId);
    if (!fold(node, ev)) return;
    dirty.add(node);
    recompute(node);
    if (ev.state === TaskState.WAITING) {
      // It may wait more than once (a fan-in that starts children of its own).
      if (node.listing === "done") node.listing = "no";
      listSoon(node, 0);
    }
    schedule();
  }

  /** A child listed (ListTasks): shown as its record has it, unless its events came first. */
  function addListed(task: Task, parent: TreeNode): void {
    if (nodes.has(task.id)) return;
    const node = nodeOf(task.id, task.kind, task.parentId || parent.id);
    const isParent = (task.children?.total ?? 0) > 0 || task.state === TaskState.WAITING;
    // A leaf's events up to its record's seq add nothing the record lacks; a parent's
    // history is still wanted (its WAITING event says where its children's share starts).
    if (!isParent) node.lastSeq = task.lastSeq;
    setState(node, task.state);
    node.own = task.progress?.fraction ?? 0;
    node.note = task.error ? `${task.error.code}: ${task.error.message}` : (task.progress?.message ?? "");
    node.bad = !!task.error;
    dirty.add(node);
    recompute(node);
    if (task.state === TaskState.WAITING) listSoon(node, 0);
  }

  /** Lists a WAITING node's children soon, and again while none is there yet (the
   * server creates them a moment after the WAITING event). */
  function listSoon(node: TreeNode, attempt: number): void {
    if (node.listing !== "no" || abort.signal.aborted) return;
    node.listing = "pending";
    const timer = window.setTimeout(async () => {
      timers.delete(timer);
      if (node.state !== TaskState.WAITING) {
        node.listing = "no"; // its children all had events (a fan-in follows only then)
        return;
      }
      let tasks: Task[] = [];
      try {
        tasks = await opts.listChildren(node.id, abort.signal);
      } catch {
        // Not fatal: children show as their events arrive; try again below.
      }
      if (abort.signal.aborted) return;
      for (const t of tasks) addListed(t, node);
      schedule();
      node.listing = tasks.length > 0 ? "done" : "no";
      if (tasks.length === 0 && attempt + 1 < LIST_DELAYS_MS.length) listSoon(node, attempt + 1);
    }, LIST_DELAYS_MS[attempt]);
    timers.add(timer);
  }

  // ---------------------------------------------------------------------------
  // The DOM: one <li> per node, its children in a nested <ul>

  function nodeElements(id: string, kind: string): NodeElements {
    const toggle = h("button", { type: "button", class: "tree-toggle", "aria-expanded": "true", title: "Fold or unfold its children" }, "▾");
    const badge = h("span", { class: "badge small", "data-testid": "tree-node-state" });
    const bar = h("div", { class: "bar" });
    const progress = h(
      "div",
      { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "data-testid": "tree-node-progress" },
      bar,
    );
    const pct = h("span", { class: "pct", "data-testid": "tree-node-pct" });
    const count = h("span", { class: "tree-count muted", "data-testid": "tree-node-children" });
    const kindEl = h("span", { class: "mono kind tree-kind", "data-testid": "tree-node-kind" }, kind);
    const note = h("span", { class: "tree-note message", "data-testid": "tree-node-message" });
    const list = h("ul", { class: "tree-children", "data-testid": "tree-children" });
    const li = h(
      "li",
      { class: "tree-node", "data-testid": "tree-node", "data-task-id": id },
      h(
        "div",
        { class: "tree-row" },
        toggle,
        h("button", { type: "button", class: "link mono", "data-testid": "tree-node-id", title: `${id}\nclick for its details`, onclick: () => opts.open(id) }, shortId(id)),
        kindEl,
        badge,
        h("div", { class: "progress-cell" }, progress, pct),
        count,
      ),
      note,
      list,
    );
    toggle.addEventListener("click", () => {
      const open = list.hidden;
      list.hidden = !open;
      toggle.textContent = open ? "▾" : "▸";
      toggle.setAttribute("aria-expanded", String(open));
    });
    return { li, toggle, kind: kindEl, badge, progress, bar, pct, count, note, list };
  }

  function schedule(): void {
    if (frame || abort.signal.aborted) return;
    frame = window.requestAnimationFrame(render);
  }

  /** Inserts a parent's new children where their id order puts them, each before the
   * next child already shown: a few found by binary search, many (a listing) in one
   * pass over the children from the end. */
  function place(parent: TreeNode): void {
    const list = parent.el.list;
    const kids = parent.children;
    if (parent.unplaced.length * 16 < kids.length) {
      for (const child of parent.unplaced) {
        if (child.placed || child.parent !== parent) continue;
        let i = insertionIndex(kids, child.id) + 1;
        while (i < kids.length && !kids[i].placed) i++;
        list.insertBefore(child.el.li, i < kids.length ? kids[i].el.li : null);
        child.placed = true;
      }
    } else {
      let next: Node | null = null;
      for (let i = kids.length - 1; i >= 0; i--) {
        const child = kids[i];
        if (!child.placed) {
          list.insertBefore(child.el.li, next);
          child.placed = true;
        }
        next = child.el.li;
      }
    }
    parent.unplaced = [];
  }

  function renderNode(n: TreeNode): void {
    const e = n.el;
    const name = stateName(n.state);
    const lower = name.toLowerCase();
    const pct = Math.round(n.fraction * 100);
    e.li.dataset.state = name;
    e.li.dataset.parentId = n.parent?.id ?? "";
    if (e.kind.textContent !== n.kind) e.kind.textContent = n.kind;
    e.badge.textContent = name;
    e.badge.className = `badge small state-${lower}`;
    e.progress.dataset.fraction = String(n.fraction);
    e.progress.setAttribute("aria-valuenow", String(pct));
    e.progress.className = `progress state-${lower}${n.state === TaskState.QUEUED ? " waiting" : ""}`;
    e.bar.style.width = `${pct}%`;
    e.pct.textContent = `${pct}%`;
    const total = n.children.length;
    e.count.textContent = total ? `${n.childDone}/${total}` : "";
    e.count.title = total ? `${n.childDone} of its ${total} children finished` : "";
    e.li.dataset.children = String(total);
    e.li.classList.toggle("has-children", total > 0);
    e.note.textContent = n.note;
    e.note.title = n.note;
    e.note.className = `tree-note message${n.bad ? " bad" : ""}`;
  }

  function render(): void {
    frame = 0;
    if (abort.signal.aborted) return;
    for (const n of dirty) {
      if (n.unplaced.length) place(n);
      renderNode(n);
    }
    dirty.clear();
    el.dataset.nodes = String(nodes.size);
    summary.textContent =
      nodes.size > 1 ? `${nodes.size} tasks · ${root.childDone}/${root.children.length} children finished` : "no children yet";
    opts.onRootProgress?.(root.fraction);
  }

  // ---------------------------------------------------------------------------
  // Start: the root, as its record has it until its events arrive

  const root = newNode(opts.rootId, opts.root?.kind ?? "");
  root.placed = true;
  rootList.appendChild(root.el.li);
  if (opts.root) {
    root.state = opts.root.state;
    root.own = opts.root.progress?.fraction ?? 0;
    root.note = opts.root.progress?.message ?? "";
    recompute(root);
  }
  schedule();

  return {
    el,
    apply,
    fraction: (id) => nodes.get(id)?.fraction,
    stop: () => {
      abort.abort();
      for (const t of timers) window.clearTimeout(t);
      timers.clear();
      if (frame) window.cancelAnimationFrame(frame);
      frame = 0;
    },
  };
}
