//! One module per verb: parse its flags, call the library, add context to errors.

pub mod archive;
pub mod attach;
pub mod build;
pub mod cache;
pub mod changes;
pub mod convert;
pub mod cp;
pub mod exec;
pub mod export;
pub mod history;
pub mod images;
pub mod import;
pub mod info;
pub mod inspect;
pub mod kill;
pub mod login;
pub mod logs;
pub mod mount;
pub mod pause;
pub mod port;
pub mod prune;
pub mod ps;
pub mod pull;
pub mod push;
pub mod rename;
pub mod restart;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod start;
pub mod stats;
pub mod stop;
pub mod tag;
pub mod top;
pub mod update;
pub mod volume;
pub mod wait;

/// Prints `Error: {message}` on stderr. A stderr that cannot take it (a closed pipe) is no
/// reason to panic: the exit code still tells.
pub fn print_error(message: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "Error: {message}");
}

/// `error` and its causes, `: ` between them. Library errors carry their cause in their own
/// message: each is printed once.
pub fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain().map(|c| c.to_string()) {
        if !message.contains(&cause) {
            message = if message.is_empty() { cause } else { format!("{message}: {cause}") };
        }
    }
    message
}

/// Prints `rows` (the header first) as docker does: each column as wide as its widest cell,
/// three spaces apart.
pub fn print_table<const N: usize>(rows: &[[String; N]]) {
    let widths: Vec<usize> =
        (0..N).map(|i| rows.iter().map(|row| row[i].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// Parses a user's image reference, with the error naming it.
pub fn parse_reference(input: &str) -> anyhow::Result<skiff::Reference> {
    Ok(input.parse::<skiff::Reference>()?)
}

/// The stored image `input` names, pulled lazily first if the store does not have it (as
/// `docker run` does); `options` are the pull's.
pub fn stored_or_pulled(
    store: &skiff::store::Store,
    client: &std::sync::Arc<skiff::registry::Client>,
    input: &str,
    options: &skiff::image::PullOptions,
) -> anyhow::Result<skiff::store::ImageRecord> {
    if let Ok(record) = store.find_image(input) {
        return Ok(record);
    }
    pulled(store, client, input, options)
}

/// `input` pulled lazily (manifest and config), as `docker run --pull` pulls.
pub fn pulled(
    store: &skiff::store::Store,
    client: &std::sync::Arc<skiff::registry::Client>,
    input: &str,
    options: &skiff::image::PullOptions,
) -> anyhow::Result<skiff::store::ImageRecord> {
    use anyhow::Context as _;
    let reference = parse_reference(input)?;
    Ok(skiff::image::pull(client, store, &reference, options, &skiff::image::Quiet)
        .with_context(|| format!("pulling {reference}"))?
        .record)
}
