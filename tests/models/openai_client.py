"""The official OpenAI Python SDK, unmodified, against an OpenAI-compatible
endpoint named only by the environment: OPENAI_BASE_URL, OPENAI_API_KEY (a
placeholder) and WOPR_TEST_MODEL. `chat` asks once whole and once streamed,
offering a tool; `models` lists the models. Each result is a line on stdout.
"""

import json
import os
import sys

try:
    import openai
except ImportError as error:
    sys.exit(f"the openai SDK is missing ({error}): run hack/test.sh, which installs tests/models/requirements.txt")

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def chat(client, model):
    whole = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS)
    call = whole.choices[0].message.tool_calls[0]
    print(f"whole: {call.function.name} {json.dumps(json.loads(call.function.arguments), sort_keys=True)} "
          f"finish={whole.choices[0].finish_reason} tokens={whole.usage.prompt_tokens}+{whole.usage.completion_tokens}")
    name, arguments, text, events = "", "", "", 0
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, stream=True):
        events += 1
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for tool_call in delta.tool_calls or []:
            name += tool_call.function.name or ""
            arguments += tool_call.function.arguments or ""
    print(f"streamed: {name} {json.dumps(json.loads(arguments), sort_keys=True)} text={text.strip()!r} events={events}")


def models(client):
    print("models: " + " ".join(model.id + "/" + model.owned_by for model in client.models.list()))


def main():
    client = openai.OpenAI()
    if sys.argv[1] == "chat":
        chat(client, os.environ["WOPR_TEST_MODEL"])
    else:
        models(client)
    print("openai sdk: ok")


main()
