"""``glsnet`` and ``python -m runtime``: the process restarts with huge pages before the CLI's imports, then runs it.

The restart (runtime.process_memory.huge_pages) replaces the interpreter, so whatever was imported before it is
imported twice. Restarting from runtime.cli, after typer and pydantic, took 0.1 s of every start; from here the
first interpreter lives 0.04 s.
"""

from runtime.process_memory.huge_pages import restart_with_huge_pages


def main() -> None:
    restart_with_huge_pages()
    from runtime.cli import main as cli_main  # after the restart: see the module docstring

    cli_main()


if __name__ == "__main__":
    main()
