//! The built-in demo kinds (docs/architecture.md), for demos, tests and benchmarks.

use std::time::Duration;

use serde_json::{Value, json};

use crate::sdk::{HandlerResult, Registry, TaskContext, TaskFailure};

/// A registry with every built-in kind.
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    r.register("demo.echo", echo)
        .register("demo.sleep", sleep)
        .register("demo.flaky", flaky)
        .register("demo.fail", fail)
        .register("demo.agent", agent);
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

/// `{"prompt": s, "tokens": n, "delay_ms": d}`: a simulated LLM agent that streams one
/// progress message per token.
async fn agent(ctx: TaskContext) -> HandlerResult {
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
        pause(&ctx, delay).await?;
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
