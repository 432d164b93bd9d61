"""``python -m sgdreg``: the ``sgdreg`` command line (same as the console script)."""

from sgdreg_cli.entry import main

if __name__ == "__main__":
    main()
