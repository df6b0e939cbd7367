"""The analysis of runs: Gao et al. fits, statistics, comparisons and the declared design."""
