"""What every request handler reaches: settings, the console's accounts and the peer clients."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request

from services.console.accounts import Accounts, open_console_database
from services.console.config import ConsoleSettings
from services.console.peers import Peers


@dataclass
class ConsoleState:
    settings: ConsoleSettings
    accounts: Accounts
    peers: Peers

    @classmethod
    def build(cls, settings: ConsoleSettings) -> "ConsoleState":
        accounts = Accounts(open_console_database(settings), timedelta(hours=settings.session_hours))
        return cls(settings, accounts, Peers(settings))

    def close(self) -> None:
        self.peers.close()
        self.accounts.database.dispose()


def console_state(request: Request) -> ConsoleState:
    return request.app.state.console


Console = Annotated[ConsoleState, Depends(console_state)]
