//! Rank and size when a process was started by Slurm or an MPI launcher.

/// This process's place in a parallel job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Rank, from 0.
    pub rank: u32,
    /// Number of ranks.
    pub size: u32,
    /// Which launcher said so ("slurm", "pmi", "openmpi", "pmix").
    pub launcher: &'static str,
}

/// The (rank, size) variables of each launcher, in the order they are tried:
/// an MPI launcher run inside a Slurm allocation sets both, and its own
/// numbering is the one the application's ranks follow.
const LAUNCHERS: [(&str, &str, &str); 4] = [
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("pmix", "PMIX_RANK", "PMIX_SIZE"),
    ("pmi", "PMI_RANK", "PMI_SIZE"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS"),
];

/// Reads rank and size from the environment.
pub fn from_env() -> Option<Launch> {
    from_vars(|k| std::env::var(k).ok())
}

/// Reads rank and size through `get` (the environment, or a test's map).
pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    for (launcher, rank, size) in LAUNCHERS {
        let Some(r) = get(rank).and_then(|v| v.trim().parse::<u32>().ok()) else {
            continue;
        };
        let s = get(size).and_then(|v| v.trim().parse::<u32>().ok()).filter(|&s| s > r);
        // A rank without a size (PMIX_SIZE is not always set) still names a
        // rank; the size is then unknown and reported as rank + 1 at least.
        return Some(Launch { rank: r, size: s.unwrap_or(r + 1), launcher });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn each_launcher_is_read() {
        assert_eq!(
            from_vars(env(&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "8")])),
            Some(Launch { rank: 3, size: 8, launcher: "slurm" })
        );
        assert_eq!(
            from_vars(env(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")])),
            Some(Launch { rank: 0, size: 2, launcher: "pmi" })
        );
        assert_eq!(
            from_vars(env(&[("OMPI_COMM_WORLD_RANK", "5"), ("OMPI_COMM_WORLD_SIZE", "6")])),
            Some(Launch { rank: 5, size: 6, launcher: "openmpi" })
        );
        assert_eq!(from_vars(env(&[])), None);
    }

    #[test]
    fn mpi_inside_slurm_uses_the_mpi_numbering() {
        let e = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "7"),
            ("OMPI_COMM_WORLD_SIZE", "16"),
        ]);
        assert_eq!(from_vars(e).map(|l| (l.rank, l.size)), Some((7, 16)));
    }

    #[test]
    fn junk_is_ignored() {
        assert_eq!(
            from_vars(env(&[("SLURM_PROCID", "x"), ("PMI_RANK", "2"), ("PMI_SIZE", "1")])).map(|l| l.size),
            Some(3)
        );
    }
}
