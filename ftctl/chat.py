"""`ftctl chat`: ask the gateway a question; the answer streams to the terminal."""

import os
import sys

import typer
from rich.markup import escape

from ftctl.common import addresses, console, gateway_unreachable


def chat(
    question: str = typer.Argument(..., help="The question to ask."),
    model: str = typer.Option("prod", "--model", help="A registry alias, model name or id."),
    system: str | None = typer.Option(None, "--system", help="An optional system message."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="The longest answer, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 answers greedily."),
    api_key: str | None = typer.Option(
        None, "--api-key", help="A gateway key (default: $FT_API_KEY; create one with `ftctl keys create`)."
    ),
) -> None:
    """Streams the answer through the OpenAI-compatible gateway (FT_GATEWAY_URL)."""
    import openai  # here, not at the top: it takes a second to import and only this command needs it

    client = openai.OpenAI(
        base_url=f"{addresses().gateway_url.rstrip('/')}/v1",
        api_key=api_key or os.environ.get("FT_API_KEY") or "none",
        max_retries=1,
    )
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    try:
        stream = client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
        )
        for chunk in stream:
            for choice in chunk.choices:
                sys.stdout.write(choice.delta.content or "")
                sys.stdout.flush()
    except openai.APIStatusError as err:
        # The gateway's own message (OpenAI's error shape), not the client's "Error code: N - ..." wrapper;
        # escaped so brackets in it are not read as console markup.
        detail = err.body.get("message") if isinstance(err.body, dict) else None
        console.print(f"[red]error[/red] {err.status_code}: {escape(detail or err.message)}")
        raise typer.Exit(1) from None
    except openai.APIConnectionError:
        console.print(f"[red]error[/red] {gateway_unreachable(addresses().gateway_url)}")
        raise typer.Exit(1) from None
    sys.stdout.write("\n")
