"""TFDS builders for datasets TFDS cannot build offline from our files (importing one registers it).

Each reads its source files from the manual dir (`config.data.manual_dir`), so they build like
TFDS's own builders in research/data/tfds_build.py: once, into `config.data.data_dir`.
"""
