"""The official Anthropic Python SDK, unmodified, against an
Anthropic-compatible endpoint named only by the environment:
ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY (a placeholder) and WOPR_TEST_MODEL.
`chat` asks once whole and once streamed, offering a tool; `models` lists
the models. Each result is a line on stdout.
"""

import json
import os
import sys

try:
    import anthropic
except ImportError as error:
    sys.exit(f"the anthropic SDK is missing ({error}): run hack/test.sh, which installs tests/models/requirements.txt")

TOOLS = [{
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def tool_use(message):
    use = next(block for block in message.content if block.type == "tool_use")
    return f"{use.name} {json.dumps(use.input, sort_keys=True)}"


def chat(client, model):
    whole = client.messages.create(model=model, max_tokens=256, messages=MESSAGES, tools=TOOLS)
    print(f"whole: {tool_use(whole)} stop={whole.stop_reason} tokens={whole.usage.input_tokens}+{whole.usage.output_tokens}")
    events = 0
    with client.messages.stream(model=model, max_tokens=256, messages=MESSAGES, tools=TOOLS) as stream:
        for _event in stream:
            events += 1
        final = stream.get_final_message()
    text = "".join(block.text for block in final.content if block.type == "text")
    print(f"streamed: {tool_use(final)} text={text!r} stop={final.stop_reason} events={events}")


def models(client):
    print("models: " + " ".join(model.id + "/" + model.display_name for model in client.models.list()))


def main():
    client = anthropic.Anthropic()
    if sys.argv[1] == "chat":
        chat(client, os.environ["WOPR_TEST_MODEL"])
    else:
        models(client)
    print("anthropic sdk: ok")


main()
