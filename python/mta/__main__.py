"""`python -m mta` is the same as the `mta` command."""

from mta.app.cli import main

if __name__ == "__main__":
    main()
