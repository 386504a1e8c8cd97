"""``python -m polypindex.cli``: the same as the ``polypindex`` console script."""

from polypindex.cli.app import main

if __name__ == "__main__":
    main()
