//! Dead letters (FAILED tasks) chosen by a filter, for bulk retry and discard: counted
//! for a dry run, then taken in batches, bounded by the dry run's moment so a bulk
//! operation applies to exactly the tasks it counted.

use super::{Error, Store};
use crate::{
    auth::Tenant,
    domain::{Labels, TaskId, TaskKind},
    pb::v1::TaskState,
};

/// Which FAILED tasks: every given filter must match.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this kind.
    pub kind: Option<TaskKind>,
    /// Only tasks carrying all these labels.
    pub labels: Labels,
    /// Only tasks whose error has this code.
    pub error_code: Option<String>,
    /// Only this tenant's (`None`: every tenant's, for a server without auth).
    pub tenant: Option<Tenant>,
    /// Only tasks that failed before this time (microseconds since the epoch).
    pub finished_before_us: i64,
}

impl DeadLetterFilter {
    /// The WHERE clause over `tasks` and its parameters, from `$1`.
    fn clause(&self) -> (String, Vec<Param>) {
        let mut sql =
            String::from("state = $1 AND finished_at_us IS NOT NULL AND finished_at_us < $2");
        let mut params = vec![
            Param::Int(TaskState::Failed as i64),
            Param::Int(self.finished_before_us),
        ];
        let next = |params: &mut Vec<Param>, p: Param| {
            params.push(p);
            format!("${}", params.len())
        };
        if let Some(kind) = &self.kind {
            let n = next(&mut params, Param::Text(kind.as_str().to_string()));
            sql += &format!(" AND kind = {n}");
        }
        if let Some(code) = &self.error_code {
            let n = next(&mut params, Param::Text(code.clone()));
            sql += &format!(" AND error_code = {n}");
        }
        if let Some(tenant) = &self.tenant {
            let n = next(&mut params, Param::Text(tenant.as_str().to_string()));
            sql += &format!(" AND tenant = {n}");
        }
        for (k, v) in self.labels.iter() {
            let nk = next(&mut params, Param::Text(k.to_string()));
            let nv = next(&mut params, Param::Text(v.to_string()));
            sql += &format!(
                " AND id IN (SELECT task_id FROM task_labels WHERE key = {nk} AND value = {nv})"
            );
        }
        (sql, params)
    }
}

#[derive(Debug, Clone)]
enum Param {
    Int(i64),
    Text(String),
}

fn bind<'q, O>(
    mut q: sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    params: Vec<Param>,
) -> sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments> {
    for p in params {
        q = match p {
            Param::Int(i) => q.bind(i),
            Param::Text(t) => q.bind(t),
        };
    }
    q
}

impl Store {
    /// How many FAILED tasks match.
    pub async fn count_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, Error> {
        let (clause, params) = filter.clause();
        self.deadline(async {
            // Safe: only fixed SQL and `$n` placeholders.
            let sql = format!("SELECT COUNT(*) FROM tasks WHERE {clause}");
            let q = bind(
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)),
                params,
            );
            Ok(q.fetch_one(&self.pool).await? as u64)
        })
        .await
    }

    /// Up to `limit` matching FAILED tasks, the longest failed first.
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: u32,
    ) -> Result<Vec<TaskId>, Error> {
        let (clause, params) = filter.clause();
        self.deadline(async {
            let sql = format!(
                "SELECT id FROM tasks WHERE {clause} ORDER BY finished_at_us, id LIMIT {limit}"
            );
            // Safe: only fixed SQL, `$n` placeholders and a number.
            let q = bind(
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)),
                params,
            );
            q.fetch_all(&self.pool)
                .await?
                .iter()
                .map(|s| super::stored_id(s))
                .collect()
        })
        .await
    }

    /// Deletes up to `limit` matching FAILED tasks (with their labels), the longest
    /// failed first; returns their ids.
    pub async fn discard_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: u32,
    ) -> Result<Vec<TaskId>, Error> {
        let (clause, params) = filter.clause();
        self.deadline(async {
            let sql = format!(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE {clause} \
                 ORDER BY finished_at_us, id LIMIT {limit}) RETURNING id"
            );
            // Safe: only fixed SQL, `$n` placeholders and a number.
            let q = bind(
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)),
                params,
            );
            q.fetch_all(&self.pool)
                .await?
                .iter()
                .map(|s| super::stored_id(s))
                .collect()
        })
        .await
    }
}
