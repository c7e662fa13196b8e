"""`ftctl`: the command line of the fine-tuning platform. Each subcommand maps to a plain function."""

import typer

from ftctl import chat, data, evaluation, keys, models, pipeline, stack, train

app = typer.Typer(
    help="Prepare data, fine-tune, evaluate and serve models on the self-hosted fine-tuning platform.",
    no_args_is_help=True,
)
app.add_typer(data.app, name="data", help="Upload, validate, inspect and prepare datasets.")
app.add_typer(train.app, name="train", help="Create, watch, list and cancel training jobs.")
app.add_typer(
    models.app, name="models", help="The model registry: list, show, register, promote, history, rollback."
)
app.add_typer(evaluation.app, name="eval", help="Evaluate models against each other and read reports.")
app.add_typer(keys.app, name="keys", help="API keys for the chat gateway.")
app.add_typer(pipeline.app, name="pipeline", help="Run prepare, train, evaluate, promote from one file.")
app.command("chat", help="Ask a served model a question; the answer streams.")(chat.chat)
app.add_typer(stack.app, name="stack", help="Start, stop and inspect the platform on this machine.")

if __name__ == "__main__":
    app()
