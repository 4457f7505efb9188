//! `ringmq cluster`: certificates for a cluster's nodes, and the cluster's state.

use std::path::PathBuf;

use clap::Subcommand;

/// `ringmq cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create the cluster CA (once; an existing one in --dir is kept) and a certificate
    /// and key for each node, signed by it: ca.pem, ca.key, node-N.pem, node-N.key.
    /// Give each node ca.pem and its own pair (`serve --cluster-certs DIR`); keep
    /// ca.key apart, it signs new nodes.
    InitCerts {
        /// Where to write the files.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// The node ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<i32>,
        /// Host names and addresses the certificates also name (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
    },
}

/// Runs a `ringmq cluster` command.
pub fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::InitCerts { dir, nodes, hosts } => {
            let written = ringmq_cluster::init_certs(&dir, &nodes, &hosts)
                .map_err(|e| anyhow::anyhow!("creating certificates in {}: {e}", dir.display()))?;
            for p in written {
                println!("{}", p.display());
            }
            Ok(())
        }
    }
}
