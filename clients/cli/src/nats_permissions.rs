//! `taskwire nats-permissions`: the nats-server `authorization` block that gives each
//! service its own NATS user, confined to its subjects (`taskwire::nats::permissions`).
//! deploy/nats-permissions.conf is its output for the built-in kinds.

use clap::Args;
use taskwire::nats::permissions;

#[derive(Debug, Args)]
pub struct NatsPermissionsArgs {
    /// A kind the workers serve (repeatable); default: the built-in demo kinds.
    #[arg(long = "kind")]
    kinds: Vec<String>,
}

/// The file: how to use it, then the block.
pub fn render(kinds: &[String]) -> String {
    let roles = permissions::roles(kinds);
    let mut out = String::from(
        "# NATS users for taskwire's services, each confined to its subjects\n\
         # (docs/security.md, \"NATS\"). Generated: `taskwire nats-permissions --kind K ...`\n\
         # (the worker's user may serve only the kinds named).\n\
         # Include it in nats-server's config and set the passwords in its environment:\n",
    );
    for r in &roles {
        out += &format!("#   {}\n", permissions::password_env(r.role));
    }
    out += "# Run each service with --nats-user <role> --nats-password <password>, and all\n\
            # but the api with --nats-manage-streams false (only the api creates streams).\n";
    out + &permissions::authorization_block(&roles)
}

pub fn run(a: NatsPermissionsArgs) {
    let kinds = if a.kinds.is_empty() {
        taskwire_worker::kinds::builtin().kinds()
    } else {
        a.kinds
    };
    print!("{}", render(&kinds));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_deploy_file_is_the_generated_one() {
        let want = super::render(&taskwire_worker::kinds::builtin().kinds());
        let have = include_str!("../../../deploy/nats-permissions.conf");
        assert_eq!(
            have, want,
            "regenerate: target/debug/taskwire nats-permissions > deploy/nats-permissions.conf"
        );
    }
}
