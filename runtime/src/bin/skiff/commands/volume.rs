//! `skiff volume`: named volumes, as docker volume manages them (create, ls, inspect, rm,
//! prune).

use crate::context::Context;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Make a volume (a random name unless one is given); its name is printed.
    Create { name: Option<String> },
    /// List volumes.
    Ls {
        /// Only the names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show volumes as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes no container uses.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume no container uses (skiff's anonymous volumes go with their
    /// containers, so -a is needed to remove anything, as docker's named ones need it).
    Prune {
        /// Named volumes too.
        #[arg(short, long)]
        all: bool,
        /// Do not ask first.
        #[arg(short, long)]
        force: bool,
    },
}

pub fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let volumes = containers.named_volumes();
    match command {
        Command::Create { name } => {
            let name =
                name.unwrap_or_else(|| (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect());
            volumes.create(&name)?;
            println!("{name}");
        }
        Command::Ls { quiet } => {
            let list = volumes.list()?;
            if quiet {
                list.iter().for_each(|v| println!("{}", v.name));
                return Ok(());
            }
            let mut table = vec![["DRIVER", "VOLUME NAME"].map(String::from)];
            table.extend(list.into_iter().map(|v| [v.driver.to_string(), v.name]));
            super::print_table(&table);
        }
        Command::Inspect { names } => {
            let found = names.iter().map(|n| volumes.get(n)).collect::<Result<Vec<_>, _>>()?;
            println!("{}", serde_json::to_string_pretty(&found)?);
        }
        Command::Rm { names } => {
            let users = containers.list()?;
            for name in names {
                volumes.remove(&name, &users)?;
                println!("{name}");
            }
        }
        Command::Prune { all, force } => {
            if !all {
                println!("Total reclaimed space: 0B (anonymous volumes go with their containers; -a removes unused named ones)");
                return Ok(());
            }
            if !super::prune::confirm("This will remove all volumes no container uses.", force)? {
                return Ok(());
            }
            let users = containers.list()?;
            println!("Deleted Volumes:");
            for volume in volumes.list()?.into_iter().filter(|v| volumes.users(&v.name, &users).is_empty()) {
                volumes.remove(&volume.name, &users)?;
                println!("{}", volume.name);
            }
        }
    }
    Ok(())
}
