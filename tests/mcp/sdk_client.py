"""Drives the sidecar's MCP endpoint with the official MCP Python SDK.

Usage: python3 sdk_client.py <url>. Prints one line per check and exits 0
when every check holds.
"""

import sys

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def main(url: str) -> None:
    async with streamable_http_client(url) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            print(f"initialized: {init.server_info.name} protocol {init.protocol_version}")

            listed = await session.list_tools()
            names = [tool.name for tool in listed.tools]
            print(f"tools: {names}")
            assert "security_whoami" in names and "memory_read" in names, names
            assert "exec_command" not in names, names

            whoami = await session.call_tool("security_whoami", {})
            assert not whoami.is_error, whoami
            text = whoami.content[0].text
            assert '"trustLevel":"semi-trusted"' in text, text
            print("allowed call: security_whoami ok")

            try:
                await session.call_tool("exec_command", {"command": "id"})
            except MCPError as error:
                assert "tool not available" in str(error), error
                print(f"denied call: {error}")
            else:
                raise AssertionError("exec_command was not refused")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
    print("mcp sdk interop: ok")
