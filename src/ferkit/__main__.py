"""`python -m ferkit ...`: the `ferkit` command under a module name, so that torchrun can launch it as a module
(`torchrun --nproc_per_node=4 -m ferkit train CONFIG`, docs/distributed.md); same commands, same options."""

from ferkit.cli import main

if __name__ == "__main__":
    main()
