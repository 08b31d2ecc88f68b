"""Drives the sidecar's MCP endpoint with the official MCP Python SDK.

Usage: python3 sdk_client.py <url>. The session's policy lists memory_read
through a grant. Prints one line per check, and `listening` once two
clients (one of a revision with sessions, one of the 2026-07-28 revision)
wait for the tool list to change, the first also subscribed to the inbox
resource: the caller then revokes the grant and puts a message in the
inbox. Exits 0 when every check holds.
"""

import sys

import anyio
import mcp.client.session
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ToolsListChanged, listen
from mcp.shared.exceptions import MCPError
from mcp_types import ResourceUpdatedNotification, ToolListChangedNotification

# How long a client waits for `notifications/tools/list_changed`.
NOTIFICATION_TIMEOUT_SECONDS = 10


async def tool_names(session: ClientSession) -> list[str]:
    return [tool.name for tool in (await session.list_tools()).tools]


async def allowed_and_denied_calls(session: ClientSession) -> None:
    whoami = await session.call_tool("security_whoami", {})
    assert not whoami.is_error, whoami
    text = whoami.content[0].text
    assert '"trustLevel":"semi-trusted"' in text, text
    try:
        await session.call_tool("exec_command", {"command": "id"})
    except MCPError as error:
        assert "tool not available" in str(error), error
    else:
        raise AssertionError("exec_command was not refused")


async def with_sessions(url: str, subscribed: anyio.Event, everyone_subscribed: anyio.Event) -> None:
    """A client of the newest revision with sessions: the change arrives on its session's stream."""
    list_changed = anyio.Event()
    inbox_updated = anyio.Event()

    async def on_message(message) -> None:
        if isinstance(message, ToolListChangedNotification):
            list_changed.set()
        if isinstance(message, ResourceUpdatedNotification) and message.params.uri == "wopr://inbox":
            inbox_updated.set()

    async with streamable_http_client(url) as (read, write, *_):
        async with ClientSession(read, write, message_handler=on_message) as session:
            init = await session.initialize()
            assert init.capabilities.tools.list_changed, init.capabilities
            print(f"initialized: {init.server_info.name} protocol {init.protocol_version}")
            names = await tool_names(session)
            print(f"tools: {names}")
            assert "security_whoami" in names and "memory_read" in names, names
            assert "exec_command" not in names, names
            await allowed_and_denied_calls(session)
            print("allowed call ok, denied call refused")
            resources = [resource.uri for resource in (await session.list_resources()).resources]
            assert resources == ["wopr://inbox"], resources
            await session.subscribe_resource("wopr://inbox")
            subscribed.set()
            await everyone_subscribed.wait()
            with anyio.fail_after(NOTIFICATION_TIMEOUT_SECONDS):
                await list_changed.wait()
            names = await tool_names(session)
            assert "memory_read" not in names, names
            print(f"{init.protocol_version}: notifications/tools/list_changed, then tools: {names}")
            with anyio.fail_after(NOTIFICATION_TIMEOUT_SECONDS):
                await inbox_updated.wait()
            inbox = await session.read_resource("wopr://inbox")
            assert '"hello"' in inbox.contents[0].text, inbox
            print(f"{init.protocol_version}: notifications/resources/updated wopr://inbox, then read it")


async def single_exchanges(url: str, subscribed: anyio.Event, everyone_subscribed: anyio.Event) -> None:
    """A client of the 2026-07-28 revision: the change arrives on its `subscriptions/listen` stream."""
    async with streamable_http_client(url) as (read, write, *_):
        async with ClientSession(read, write) as session:
            discovered = await session.discover()
            version = session.protocol_version
            print(f"discovered: protocol {version} of {discovered.supported_versions}")
            assert "memory_read" in await tool_names(session)
            async with listen(session, tools_list_changed=True) as subscription:
                subscribed.set()
                await everyone_subscribed.wait()
                with anyio.fail_after(NOTIFICATION_TIMEOUT_SECONDS):
                    event = await anext(subscription)
                assert isinstance(event, ToolsListChanged), event
            names = await tool_names(session)
            assert "memory_read" not in names, names
            print(f"{version}: subscriptions/listen tools_list_changed, then tools: {names}")


async def older_revision(url: str, version: str) -> None:
    """A client that only speaks an older revision still lists and calls."""
    mcp.client.session.LATEST_HANDSHAKE_VERSION = version
    async with streamable_http_client(url) as (read, write, *_):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.protocol_version == version, init.protocol_version
            names = await tool_names(session)
            assert "security_whoami" in names and "memory_read" not in names, names
            await allowed_and_denied_calls(session)
            print(f"older revision {version}: tools {names}, allowed call ok, denied call refused")


async def main(url: str) -> None:
    everyone_subscribed = anyio.Event()
    subscribed = [anyio.Event(), anyio.Event()]
    async with anyio.create_task_group() as clients:
        clients.start_soon(with_sessions, url, subscribed[0], everyone_subscribed)
        clients.start_soon(single_exchanges, url, subscribed[1], everyone_subscribed)
        for event in subscribed:
            await event.wait()
        # The caller revokes the grant and fills the inbox on this line.
        print("listening", flush=True)
        everyone_subscribed.set()
    await older_revision(url, "2025-03-26")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
    print("mcp sdk interop: ok")
