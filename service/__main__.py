"""``python -m service serve|worker|up``: the server commands without the client CLI."""

import click

from service.cli import serve, up
from worker.cli import worker


@click.group()
def main() -> None:
    """NaCS service processes."""


main.add_command(serve)
main.add_command(worker)
main.add_command(up)

if __name__ == "__main__":
    main()
