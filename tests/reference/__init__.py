"""Small functions quoted from public reference code, unchanged, so that parity tests run on a clean clone without
network access. Each module names its source repository, commit, paths and licence."""
