//! The built-in demo kinds (docs/architecture.md), for demos, tests and benchmarks.

use std::time::Duration;

use serde_json::{Value, json};

use taskwire::pb::v1::{ChildFailurePolicy, TaskState};

use crate::sdk::{ChildSpec, HandlerResult, Registry, TaskContext, TaskFailure};

/// A registry with every built-in kind.
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    r.register("demo.echo", echo)
        .register("demo.sleep", sleep)
        .register("demo.flaky", flaky)
        .register("demo.fail", fail)
        .register("demo.agent", agent)
        .register("demo.fanout", fanout);
    r
}

/// Output = input, at once.
async fn echo(ctx: TaskContext) -> HandlerResult {
    Ok(ctx.input().clone())
}

/// `{"seconds": f, "steps": n}`: n evenly spaced progress events.
async fn sleep(ctx: TaskContext) -> HandlerResult {
    let seconds = number(ctx.input(), "seconds", 1.0)?;
    let steps = number(ctx.input(), "steps", 10.0)?.max(1.0) as u64;
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(TaskFailure::fatal("seconds must be 0..=86400").with_code("BAD_INPUT"));
    }
    let step = Duration::from_secs_f64(seconds / steps as f64);
    for i in 1..=steps {
        pause(&ctx, step).await?;
        ctx.progress(i as f64 / steps as f64, format!("step {i}/{steps}"))
            .await?;
    }
    Ok(json!({ "slept": seconds }))
}

/// `{"fail_times": n}`: attempts 1..=n fail retryably, then it succeeds.
async fn flaky(ctx: TaskContext) -> HandlerResult {
    let fail_times = number(ctx.input(), "fail_times", 1.0)? as u32;
    if ctx.attempt() <= fail_times {
        return Err(TaskFailure::retryable(format!(
            "flaky failure {} of {fail_times}",
            ctx.attempt()
        )));
    }
    Ok(json!({ "attempts": ctx.attempt() }))
}

/// Always fails, not retryably.
async fn fail(_ctx: TaskContext) -> HandlerResult {
    Err(TaskFailure::fatal("demo.fail always fails").with_code("DEMO_FAILURE"))
}

/// `{"prompt": s, "tokens": n, "delay_ms": d, "tools": t}`: a simulated LLM agent that
/// streams one progress message per token. With `tools` > 0 it fans out: it plans,
/// starts `t` tool calls (child `demo.agent` tasks that stream their own tokens), waits
/// for them, then writes a summary of their answers (its fan-in step).
async fn agent(ctx: TaskContext) -> HandlerResult {
    let tools = number(ctx.input(), "tools", 0.0)? as usize;
    if tools > 0 {
        return match ctx.children() {
            None => plan(&ctx, tools).await,
            Some(_) => summarize(&ctx).await,
        };
    }
    generate(&ctx).await
}

/// The agent's first step with tools: a few planning tokens, then one child per tool.
async fn plan(ctx: &TaskContext, tools: usize) -> HandlerResult {
    let delay = Duration::from_millis(number(ctx.input(), "delay_ms", 50.0)? as u64);
    let tokens = number(ctx.input(), "tokens", 20.0)?;
    // Planning is a tenth of the whole: the tree's progress goes on from where the
    // step's ends, through the tools' share and the summary's.
    for (i, step) in ["reading the prompt", "choosing tools"].iter().enumerate() {
        pause(ctx, delay).await?;
        ctx.progress((i + 1) as f64 * 0.05, *step).await?;
    }
    let prompt = ctx.input()["prompt"].as_str().unwrap_or("");
    for i in 0..tools {
        ctx.spawn(ChildSpec::new(
            "demo.agent",
            json!({ "prompt": format!("{prompt} / tool {}", i + 1), "tokens": tokens, "delay_ms": delay.as_millis() as u64 }),
        ))?;
    }
    Ok(json!({ "plan": format!("{tools} tool calls") }))
}

/// The agent's fan-in: one line per tool's answer, streamed.
async fn summarize(ctx: &TaskContext) -> HandlerResult {
    let delay = Duration::from_millis(number(ctx.input(), "delay_ms", 50.0)? as u64);
    let children = ctx.children().unwrap_or_default();
    let mut lines = Vec::new();
    for (i, c) in children.iter().enumerate() {
        pause(ctx, delay).await?;
        let text = c
            .output
            .as_ref()
            .and_then(|o| o["text"].as_str())
            .unwrap_or("(no answer)");
        lines.push(format!("tool {}: {text}", i + 1));
        ctx.progress(
            (i + 1) as f64 / children.len().max(1) as f64,
            format!("summarizing tool {}", i + 1),
        )
        .await?;
    }
    Ok(json!({ "summary": lines }))
}

/// `{"children": n, "child_kind": k, "child_input": v, "fail": [i, ...], "policy":
/// "fail_parent" | "ignore" | "continue", "fan_in_seconds": f}`: starts n children
/// (of `child_kind`, default demo.echo with input `{"i": i}`; those at the `fail`
/// indices run demo.fail), each under `policy`. Its fan-in (after `fan_in_seconds`,
/// with progress) returns every result it received, in order.
async fn fanout(ctx: TaskContext) -> HandlerResult {
    let input = ctx.input().clone();
    if let Some(children) = ctx.children() {
        let seconds = number(&input, "fan_in_seconds", 0.0)?;
        let steps = 10;
        for i in 1..=steps {
            pause(&ctx, Duration::from_secs_f64(seconds / f64::from(steps))).await?;
            ctx.progress(
                f64::from(i) / f64::from(steps),
                format!("fan-in {i}/{steps}"),
            )
            .await?;
        }
        let results: Vec<Value> = children
            .iter()
            .map(|c| {
                json!({
                    "task_id": c.task_id.to_string(),
                    "state": c.state.as_str_name(),
                    "output": c.output,
                    "error": c.error.as_ref().map(|e| e.code.clone()),
                })
            })
            .collect();
        let succeeded = children
            .iter()
            .filter(|c| c.state == TaskState::Succeeded)
            .count();
        return Ok(
            json!({ "received": results.len(), "succeeded": succeeded, "results": results }),
        );
    }
    let n = number(&input, "children", 0.0)? as usize;
    let fail: Vec<u64> = input["fail"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let policy = match input["policy"].as_str().unwrap_or("fail_parent") {
        "fail_parent" => ChildFailurePolicy::FailParent,
        "ignore" => ChildFailurePolicy::Ignore,
        "continue" => ChildFailurePolicy::Continue,
        other => {
            return Err(TaskFailure::fatal(format!(
                "policy must be fail_parent, ignore or continue, not {other}"
            ))
            .with_code("BAD_INPUT"));
        }
    };
    let kind = input["child_kind"].as_str().unwrap_or("demo.echo");
    for i in 0..n {
        let child = if fail.contains(&(i as u64)) {
            ChildSpec::new("demo.fail", json!({ "i": i }))
        } else {
            let input = match &input["child_input"] {
                Value::Null => json!({ "i": i }),
                v => v.clone(),
            };
            ChildSpec::new(kind, input)
        };
        ctx.spawn(child.on_failure(policy))?;
    }
    Ok(json!({ "spawned": n }))
}

/// The agent without tools: streams its tokens.
async fn generate(ctx: &TaskContext) -> HandlerResult {
    const WORDS: &[&str] = &[
        "the",
        "task",
        "streams",
        "its",
        "progress",
        "as",
        "it",
        "happens",
        "and",
        "nothing",
        "is",
        "lost",
        "when",
        "a",
        "worker",
        "dies",
        "or",
        "a",
        "client",
        "reconnects",
    ];
    let prompt = ctx.input()["prompt"].as_str().unwrap_or("").to_string();
    let tokens = number(ctx.input(), "tokens", 20.0)? as usize;
    let delay = Duration::from_millis(number(ctx.input(), "delay_ms", 50.0)? as u64);
    // Deterministic per prompt, so tests and demos can check the text.
    let seed = prompt
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    let mut text = String::new();
    for i in 0..tokens {
        pause(ctx, delay).await?;
        let word = WORDS[(seed + i) % WORDS.len()];
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(word);
        ctx.progress((i + 1) as f64 / tokens.max(1) as f64, word)
            .await?;
    }
    Ok(json!({ "text": text }))
}

/// Sleeps, but returns early (as a stop) if the attempt is cancelled.
async fn pause(ctx: &TaskContext, d: Duration) -> Result<(), TaskFailure> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = ctx.cancelled() => Err(crate::sdk::Stopped.into()),
    }
}

fn number(input: &Value, field: &str, default: f64) -> Result<f64, TaskFailure> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| {
                TaskFailure::fatal(format!("{field} must be a non-negative number"))
                    .with_code("BAD_INPUT")
            }),
    }
}
