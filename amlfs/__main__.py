"""`python -m amlfs` runs the command line (the background mount re-executes itself this way)."""

from amlfs.cli import main

if __name__ == "__main__":
    main(prog_name="amlfs")
