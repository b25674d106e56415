"""Build chat-template fixtures: tiny tokenizers carrying the real chat templates of four model families, and what
``transformers``' ``apply_chat_template`` makes of eleven conversations with them.

What it makes
-------------
``tests/fixtures/chat/<name>/`` for four families and ``tests/fixtures/chat/README.md``.  They let the tests of
``jaxformer/data/chat.py`` compare its rendering, token ids and assistant masks with transformers' without needing
transformers (or a real multi-MB tokenizer) at test time.

===========  ================================================  ===================================================
name         template (verbatim; ``TEMPLATE_SOURCES``)         tokenizer.json; where the template is stored
===========  ================================================  ===================================================
``chatml``   Qwen2.5-Instruct: ChatML, the tools branch, the   byte-level BPE laid out as Qwen2.5's (NFC, Qwen's
             default system prompt "You are Qwen, created by   split regex, ByteLevel): 400 + ``<|endoftext|>``
             Alibaba Cloud. You are a helpful assistant."      ``<|im_start|>`` ``<|im_end|>``; template in
             when the chat has no system turn                  tokenizer_config.json's ``"chat_template"``
``llama3``   Meta-Llama-3-8B-Instruct (the short one: bos,     byte-level BPE laid out as Llama 3's (its split
             headers, ``content | trim``, ``<|eot_id|>``)      regex, ByteLevel; the post-processor prepends
                                                               ``<|begin_of_text|>``): 400 + 5 specials; template
                                                               in ``chat_template.jinja`` (no config key)
``llama31``  Llama-3.1-8B-Instruct (the long one: a system     the llama3 tokenizer; ``chat_template.jinja``
             header with "Cutting Knowledge Date" and
             ``date_string`` default "26 Jul 2024", tools)
``gemma3``   gemma-3-1b-it: ``<bos>``, the system message      ``tests/fixtures/pretrained/gemma3/tokenizer.json``
             folded into the first user turn, "model" turns,   (BPE with byte fallback, ``<bos>`` prepended by
             ``trim``, raises unless the roles alternate       its post-processor) + ``<start_of_turn>``
                                                               ``<end_of_turn>`` (ids 352, 353); template in
                                                               tokenizer_config.json, whose ``bos_token`` is an
                                                               AddedToken dict (``{"__type": "AddedToken",
                                                               "content": "<bos>", ...}``)
===========  ================================================  ===================================================

Each directory holds ``tokenizer.json``, ``tokenizer_config.json`` (as ``PreTrainedTokenizerFast.save_pretrained``
writes it in transformers 5: ``"tokenizer_class": "TokenizersBackend"``, ``"backend": "tokenizers"``,
``model_max_length`` 2048 and the family's named special tokens: chatml eos ``<|im_end|>``, pad ``<|endoftext|>``, no
bos; llama3 / llama31 bos ``<|begin_of_text|>``, eos ``<|eot_id|>``; gemma3 bos ``<bos>``, eos ``<eos>``, pad
``<pad>``, unk ``<unk>``), ``chat_template.jinja`` (llama3, llama31: ``save_pretrained``'s default; chatml and
gemma3 are saved with ``save_jinja_files=False``) and ``reference.json``.  The byte-level tokenizers are trained
with ``tokenizers``' BpeTrainer (vocab 400 = 256 bytes + 144 merges) on the paragraphs of tinyshakespeare.txt
(read from ``../shared/data/``, never copied into the repository), so every character encodes, without ``<unk>``.
The script asserts: each template's sha256 (``TEMPLATE_SHA256``), that ``AutoTokenizer.from_pretrained(dir)``
reads back the template, the special tokens as plain strings (gemma3's AddedToken dict included) and the same ids
as plain ``tokenizers``, every special token is one special added token, each tokenizer.json is < 60 KB.

reference.json
--------------
``transformers_version``, ``tokenizers_version``, ``template_source`` (where the template text came from),
``generation_template`` and ``cases``, a list of (one per conversation the template accepts)

``name``                    the conversation's name (below)
``messages``                ``[{"role", "content"}, ...]``
``text``                    ``tok.apply_chat_template(messages, tokenize=False)`` with the real template
``text_generation_prompt``  the same with ``add_generation_prompt=True``
``ids``                     ``tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]``
                            (asserted == ``tok(text, add_special_tokens=False)["input_ids"]`` == plain
                            ``tokenizers``' ``encode(text, add_special_tokens=False).ids``)
``assistant_mask``          ``apply_chat_template(..., return_assistant_tokens_mask=True,
                            chat_template=generation_template)["assistant_masks"]``
``assistant_spans``         (extra) the ``[start, end)`` character spans of ``text`` that the generation template's
                            ``{% generation %}`` blocks rendered (transformers' ``render_jinja_template``), one per
                            assistant message

and ``rejected``: ``[{"name", "messages", "error"}]``, the conversations the real template raises on (the tagged one
raises the same).  ``generation_template`` is the real template with ``{% generation %}...{% endgeneration %}``
around each assistant message's content and the end-of-turn marker that closes it (``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``), not the newline after it nor the role header before it (``GENERATION_EDITS``; tool-call turns,
absent here, are left untagged).  Asserted for every case: it renders exactly the real template's text (with and
without the generation prompt) and ids; each span is the reply (``strip()``-ed where the template trims: llama3,
llama31, gemma3) + the marker; the mask has a 1 iff the conversation has an assistant message; the template's
bos, where it has one, appears once and is the first id.

The conversations (``CASES``; gemma3 rejects the last, so it has 10 cases, the others 11): ``one_turn``;
``system_three_turns`` (system + 3 exchanges); ``unicode`` (precomposed and combining accents, CJK, emoji with a
skin tone and a ZWJ sequence, Arabic and Hebrew, in the user's and the assistant's turns); ``empty_replies`` ("" as
the middle and the last reply); ``trailing_user`` (2 exchanges, then a user turn); ``padded_content`` (spaces, tabs,
newlines around the content); ``reply_in_prompt`` (the reply "yes" also appears in the user turns); ``code_and_braces``
(code fences, tabs, ``{{ }}`` / ``{% %}`` / ``{%- -%}`` as text); ``system_then_user`` (all-zero mask);
``user_only`` (all-zero mask; Qwen adds its default system prompt, Llama 3.1 its date header);
``consecutive_users`` (two user turns in a row: Gemma's template raises "Conversation roles must alternate
user/assistant/user/assistant/...").

What transformers does at span edges (5.25.0, tokenizers 0.23.3)
-----------------------------------------------------------------
- The mask is "token i overlaps a span": offsets ``[a, b)``, span ``[s, e)``, ``a < e and b > s`` (recomputed from
  the offsets and asserted).  A token that straddles a span edge is therefore an assistant token: in chatml's
  ``padded_content`` the header's "\\n" and the reply's leading "\\n\\n" pre-tokenize together and the first token
  "ĊĊ" has chars [168, 170) while the span starts at 169, so it is 1 (the script prints such tokens).  Llama and
  Gemma trim the content, so nothing straddles there.
- A special token's offsets cover its whole text (``<|im_end|>``: 10 characters); the "\\n" after it is its own token,
  outside the span.
- Offsets are in characters (code points), and every byte token of a multi-byte character (byte-level "Â" "¡" for
  "¡", gemma's byte-fallback ``<0xC2>`` ``<0xA1>``; 4 tokens for "🎉") carries that whole character's offsets, so they
  are in or out of a span together.
- chatml's NFC normalizer turns "e" + U+0301 into "é": its two byte tokens get the offsets of the "e" alone and the
  combining mark's character maps to no token (``char_to_token`` returns None); decoding the ids gives the NFC text,
  not ``text``.
- llama3 / gemma3 tokenizers add their bos when asked for special tokens; ``apply_chat_template`` encodes with
  ``add_special_tokens=False`` and the template writes the bos, so it appears once.

Where the templates came from
-----------------------------
No network access: the texts are copies found in public source (details in ``TEMPLATE_SOURCES``).  chatml: Qwen2.5's
as copied in huggingface.js' jinja tests (identical to swift-jinja's Qwen2.5-0.5B-Instruct test string but for the
final newline).  llama3: the template stored in Ollama's llama3:8b GGUF (huggingface.js' ollama automap), with real
newline characters inside its two ``'<|end_header_id|>\\n\\n'`` literals; one copy (Vertex AI's llama3.json) writes
them as ``\\n`` escapes instead, which renders the same.  llama31: huggingface.js' jinja test copy, identical to the
llama3.1:8b GGUF's.  gemma3: transformers' ``convert_gemma3_weights.py`` ``_CHAT_TEMPLATE``, identical to the
gemma3:270m GGUF's and, by eye, to gorilla's copy of a Gemma 3 tokenizer_config.json (the first Gemma 3 revision,
without the ``is string`` test on the system message, is not used).

Requirements / regenerating
---------------------------
Needs ``transformers`` (made with 5.25.0; ``tokenizers`` 0.23.3, jinja2 3.1.6) and ../shared/data/tinyshakespeare.txt;
never needed by the tests, which only read the files.  Regenerate (replaces ``tests/fixtures/chat/``)::

    .venv/bin/python experiments/make_chat_fixtures.py

The output is deterministic (two runs give byte-identical files).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jinja2
import tokenizers
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "chat"
# the training text of the byte-level tokenizers: read in place, never copied into the repository
CORPUS_PATHS = [
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    ROOT / "shared" / "data" / "tinyshakespeare.txt",
]
GEMMA_TOKENIZER = ROOT / "tests" / "fixtures" / "pretrained" / "gemma3" / "tokenizer.json"
BPE_VOCAB = 400  # byte-level fixtures: 256 bytes + 144 merges, then the family's special tokens
MODEL_MAX_LENGTH = 2048
MAX_TOKENIZER_BYTES = 60_000  # each tokenizer.json stays below this
MAX_TOTAL_KIB = 400  # size limit of tests/fixtures/chat
# Qwen2Tokenizer's PRETOKENIZE_REGEX (as in make_pretrained_fixtures.py) and Llama 3's (digits in groups of 1-3)
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA3_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]

# ----------------------------------------------------------------------------------------------------------------------
# the chat templates, verbatim (see TEMPLATE_SOURCES; sha256 of each checked in main)

QWEN25_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou '
    'are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n"
    "\n"
    "'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + "
    "content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n"
    "\n"
    "' }}{% endif %}"
)

LLAMA31_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    '    {%- set date_string = "26 Jul 2024" %}\n'
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    "\n"
    "{#- System message + builtin tools #}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    "{%- if builtin_tools is defined or tools is not none %}\n"
    '    {{- "Environment: ipython\\n" }}\n'
    "{%- endif %}\n"
    "{%- if builtin_tools is defined %}\n"
    '    {{- "Tools: " + builtin_tools | reject(\'equalto\', \'code_interpreter\') | join(", ") + "\\n\\n"}}\n'
    "{%- endif %}\n"
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{%- if tools is not none and not tools_in_user_message %}\n"
    '    {{- "You have access to the following functions. To call a function, please respond with JSON '
    'for a function call." }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user "
    'message!") }}\n'
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    '    {{- first_user_message + "<|eot_id|>"}}\n'
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
    "trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n"
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- "<|python_tag|>" + tool_call.name + ".call(" }}\n'
    "            {%- for arg_name, arg_val in tool_call.arguments | items %}\n"
    "                {{- arg_name + '=\"' + arg_val + '\"' }}\n"
    "                {%- if not loop.last %}\n"
    '                    {{- ", " }}\n'
    "                {%- endif %}\n"
    "                {%- endfor %}\n"
    '            {{- ")" }}\n'
    "        {%- else  %}\n"
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "            {{- '\"parameters\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    '            {{- "}" }}\n'
    "        {%- endif %}\n"
    "        {%- if builtin_tools is defined %}\n"
    "            {#- This means we're in ipython mode #}\n"
    '            {{- "<|eom_id|>" }}\n'
    "        {%- else %}\n"
    '            {{- "<|eot_id|>" }}\n'
    "        {%- endif %}\n"
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    '        {{- "<|eot_id|>" }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") '
    "}}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n"
    '\' + (first_user_prefix if loop.first else "") }}\n'
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n"
    "' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n"
    "'}}\n"
    "{%- endif -%}\n"
)

TEMPLATE_SHA256 = {
    "chatml": "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f",
    "llama3": "ba03a121d097859c7b5b9cd03af99aafe95275210d2876f642ad9929a150f122",
    "llama31": "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    "gemma3": "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4",
}
# where each template's text came from (also written to reference.json and README.md)
HFJS = "huggingface/huggingface.js@fe42e68017ffc76d09922ea8f9b38a6964345710"
TEMPLATE_SOURCES = {
    "chatml": (
        "Qwen/Qwen2.5-0.5B-Instruct tokenizer_config.json 'chat_template' (every Qwen2.5-*-Instruct checkpoint ships "
        f"this text), verbatim as copied in {HFJS} packages/jinja/test/e2e.test.js, entry 'Qwen/Qwen2.5-7B-Instruct'; "
        "identical to the 'Qwen/Qwen2.5-0.5B-Instruct' test string of "
        "huggingface/swift-jinja@e095395020917170c3398e024939008faabe464e Tests/JinjaTests/IntegrationTests.swift "
        "except that the test drops the final newline; agrees with GoogleCloudPlatform/vertex-ai-samples "
        "community-content/vertex_model_garden/model_oss/peft/train/vmg/templates/qwen2_5.json (a copy of "
        "Qwen/Qwen2.5-72B-Instruct's, compared by eye)"
    ),
    "llama3": (
        "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json 'chat_template' (the current revision, which "
        "tests add_generation_prompt; an earlier revision always appended the assistant header), verbatim as "
        f"stored in Ollama's llama3:8b GGUF: {HFJS} packages/ollama-utils/src/chat-template-automap.ts, entry "
        "'library/llama3:8b'; GoogleCloudPlatform/vertex-ai-samples community-content/vertex_model_garden/model_oss/"
        "peft/train/vmg/templates/llama3.json (a copy of meta-llama/Meta-Llama-3-70B-Instruct@a5a71a75 "
        "tokenizer_config.json) has the same text with the newlines inside the two '<|end_header_id|>\\n\\n' "
        "string literals written as jinja escapes (renders identically)"
    ),
    "llama31": (
        "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json 'chat_template', verbatim as copied in "
        f"{HFJS} packages/jinja/test/e2e.test.js, entry 'meta-llama/Llama-3.1-8B-Instruct'; identical to the "
        "'library/llama3.1:8b' GGUF template in packages/ollama-utils/src/chat-template-automap.ts (same commit)"
    ),
    "gemma3": (
        "google/gemma-3-1b-it tokenizer_config.json 'chat_template' (all Gemma 3 instruction-tuned checkpoints), "
        "verbatim as huggingface/transformers src/transformers/models/gemma3/convert_gemma3_weights.py "
        "_CHAT_TEMPLATE (the converter that writes Gemma 3 checkpoints); identical to the 'library/gemma3:270m' "
        f"GGUF template in {HFJS} packages/ollama-utils/src/chat-template-automap.ts; agrees with the copy of a "
        "Gemma 3 tokenizer_config.json in ShishirPatil/gorilla berkeley-function-call-leaderboard/bfcl/"
        "model_handler/local_inference/gemma.py (compared by eye). (The first March-2025 revision, still in the "
        "'library/gemma3:1b' GGUF, lacks the 'is string' branch: a plain-string system message makes it raise "
        "UndefinedError.)"
    ),
}

# ----------------------------------------------------------------------------------------------------------------------
# the conversations (the same for every fixture; a template that raises on one records it under "rejected")


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


CASES: list[tuple[str, list[dict[str, str]]]] = [
    ("one_turn", [_msg("user", "Hello! Who are you?"), _msg("assistant", "I am a small test model.")]),
    (
        "system_three_turns",
        [
            _msg("system", "You are a terse assistant. Answer in one line."),
            _msg("user", "What is the capital of France?"),
            _msg("assistant", "Paris."),
            _msg("user", "And of Italy?"),
            _msg("assistant", "Rome."),
            _msg("user", "Thanks, that is all."),
            _msg("assistant", "You are welcome."),
        ],
    ),
    (
        "unicode",
        [
            # precomposed and combining accents (e + U+0301), CJK, emoji with skin tone / ZWJ, Arabic and Hebrew
            _msg("user", "Café naïve, cafe\u0301 déjà vu. 東京は晴れ？ 🙂👍🏽 مرحبا بالعالم שלום"),
            _msg("assistant", "¡Olé! Cafe\u0301 → café. 你好，世界。 👩‍💻 مرحبا שלום עולם 🎉"),
        ],
    ),
    (
        "empty_replies",
        [
            _msg("user", "First question?"),
            _msg("assistant", "First answer."),
            _msg("user", "Second question?"),
            _msg("assistant", ""),
            _msg("user", "Third question?"),
            _msg("assistant", ""),
        ],
    ),
    (
        "trailing_user",
        [
            _msg("user", "Name a colour."),
            _msg("assistant", "Blue."),
            _msg("user", "Another one."),
            _msg("assistant", "Green."),
            _msg("user", "And a third?"),
        ],
    ),
    (
        "padded_content",
        [
            _msg("user", "  Keep the spaces?  \n"),
            _msg("assistant", "\n\n  Leading and trailing whitespace.  \n\n"),
            _msg("user", "\tTabbed question\t"),
            _msg("assistant", "   spaces only before"),
        ],
    ),
    (
        "reply_in_prompt",
        [
            _msg("user", "Say yes. Only yes: yes"),
            _msg("assistant", "yes"),
            _msg("user", "yes or no? Answer yes."),
            _msg("assistant", "yes"),
        ],
    ),
    (
        "code_and_braces",
        [
            _msg(
                "user",
                "Fix this:\n```python\ndef f(x):\n\treturn {{ x }}  # {% raw %} is not a tag here\n```\n"
                "Keep {%- and -%} as text.",
            ),
            _msg(
                "assistant",
                "Here:\n```python\ndef f(x):\n\treturn {'x': x}  # {{ x }} {% if x %}\n```\n\tIndented with a tab.",
            ),
        ],
    ),
    ("system_then_user", [_msg("system", "Be brief."), _msg("user", "What is 2 + 2?")]),
    ("user_only", [_msg("user", "Just one question, no answer yet.")]),
    (
        # two user turns in a row: Gemma's template raises "Conversation roles must alternate ..."
        "consecutive_users",
        [_msg("user", "Part one."), _msg("user", "Part two."), _msg("assistant", "Both parts read.")],
    ),
]

# ----------------------------------------------------------------------------------------------------------------------
# the generation templates: the real ones with {% generation %} ... {% endgeneration %} around each (non tool-call)
# assistant message's content + end-of-turn marker; (old, new) edits, each old text found exactly once

GENERATION_EDITS: dict[str, list[tuple[str, str]]] = {
    "chatml": [
        (
            "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n",
            '        {%- if message.role == "assistant" %}\n'
            "            {{- '<|im_start|>' + message.role + '\\n' }}"
            "{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}\n"
            "        {%- else %}\n"
            "            {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
            "        {%- endif %}\n",
        )
    ],
    "llama3": [
        (
            "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
            "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
            "{{ content }}",
            "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' %}"
            "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
            "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}"
            "{% endgeneration %}{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}",
        )
    ],
    "llama31": [
        (
            "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] "
            "| trim + '<|eot_id|>' }}\n",
            "        {%- if message['role'] == 'assistant' %}\n"
            "            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}{% generation %}"
            "{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}\n"
            "        {%- else %}\n"
            "            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] "
            "| trim + '<|eot_id|>' }}\n"
            "        {%- endif %}\n",
        )
    ],
}
_GEMMA_BODY = (
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
)
GENERATION_EDITS["gemma3"] = [
    (
        _GEMMA_BODY + "    {{ '<end_of_turn>\n' }}\n",
        '    {%- if role == "model" -%}\n'
        "    {%- generation -%}\n" + _GEMMA_BODY + "    {{ '<end_of_turn>' }}\n"
        "    {%- endgeneration -%}\n"
        "    {{ '\n' }}\n"
        "    {%- else -%}\n" + _GEMMA_BODY + "    {{ '<end_of_turn>\n' }}\n"
        "    {%- endif -%}\n",
    )
]


@dataclass(frozen=True)
class Fixture:
    template: str
    tokens: dict[str, str]  # PreTrainedTokenizerFast's named special tokens
    jinja_file: bool  # template in chat_template.jinja (else tokenizer_config.json's "chat_template")
    end: str  # the end-of-turn marker each assistant span ends with
    trims: bool  # the template strips the content's surrounding whitespace (jinja's `trim`)


LLAMA3_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
FIXTURES = {
    "chatml": Fixture(
        template=QWEN25_TEMPLATE,
        tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        jinja_file=False,
        end="<|im_end|>",
        trims=False,
    ),
    "llama3": Fixture(template=LLAMA3_TEMPLATE, tokens=LLAMA3_TOKENS, jinja_file=True, end="<|eot_id|>", trims=True),
    "llama31": Fixture(template=LLAMA31_TEMPLATE, tokens=LLAMA3_TOKENS, jinja_file=True, end="<|eot_id|>", trims=True),
    "gemma3": Fixture(
        template=GEMMA3_TEMPLATE,
        tokens={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        jinja_file=False,
        end="<end_of_turn>",
        trims=True,
    ),
}
NAMES = list(FIXTURES)


def generation_template(name: str) -> str:
    text = FIXTURES[name].template
    for old, new in GENERATION_EDITS[name]:
        assert text.count(old) == 1, (name, old)
        text = text.replace(old, new)
    return text


# ----------------------------------------------------------------------------------------------------------------------
# tokenizers


def corpus_chunks() -> list[str]:
    path = next((p for p in CORPUS_PATHS if p.is_file()), None)
    if path is None:
        sys.exit(f"tinyshakespeare.txt not found at any of {[str(p) for p in CORPUS_PATHS]}")
    text = path.read_text(encoding="utf-8")
    return [para + "\n\n" for para in text.split("\n\n") if para.strip()]  # speeches, with their blank line


def train_byte_level(chunks: list[str], regex: str, specials: list[str], nfc: bool) -> Tokenizer:
    """Byte-level BPE laid out as Qwen2.5's / Llama 3's tokenizer.json: (NFC,) the family's split regex, then
    ``ByteLevel`` on the pieces; ``BPE_VOCAB`` entries (256 bytes + merges), the special tokens added after them."""
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(chunks, trainer=trainer)
    assert tok.get_vocab_size() == BPE_VOCAB, tok.get_vocab_size()
    tok.add_special_tokens(specials)
    return tok


def chatml_tokenizer(chunks: list[str]) -> Tokenizer:
    tok = train_byte_level(chunks, QWEN_PRETOKENIZE_REGEX, CHATML_SPECIALS, nfc=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def llama3_tokenizer(chunks: list[str]) -> Tokenizer:
    """As Llama 3's: the post-processor prepends ``<|begin_of_text|>`` when special tokens are added (the chat
    templates write it themselves, so transformers encodes their text with ``add_special_tokens=False``)."""
    tok = train_byte_level(chunks, LLAMA3_PRETOKENIZE_REGEX, LLAMA3_SPECIALS, nfc=False)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))]
            ),
        ]
    )
    return tok


def gemma3_tokenizer() -> Tokenizer:
    """The gemma fixtures' tokenizer (``tests/fixtures/pretrained/gemma3/tokenizer.json``: BPE with byte fallback,
    ``<bos>`` prepended by its post-processor) with the missing ones of ``GEMMA_SPECIALS`` added as special tokens."""
    tok = Tokenizer.from_file(str(GEMMA_TOKENIZER))
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    missing = [t for t in GEMMA_SPECIALS if t not in special]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return tok


def config_json(cfg: dict) -> str:
    """tokenizer_config.json's text as transformers writes it (``save_pretrained``: indent 2, sorted keys)."""
    return json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def save(name: str, tok: Tokenizer, d: Path) -> None:
    fx = FIXTURES[name]
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, chat_template=fx.template, model_max_length=MODEL_MAX_LENGTH, **fx.tokens
    )
    wrapped.save_pretrained(d, save_jinja_files=fx.jinja_file)
    cfg_path = d / "tokenizer_config.json"
    text = cfg_path.read_text(encoding="utf-8")
    cfg = json.loads(text)
    assert text == config_json(cfg), "tokenizer_config.json layout changed"  # so rewriting it below changes one key
    assert ("chat_template" in cfg) != fx.jinja_file and (d / "chat_template.jinja").exists() == fx.jinja_file, name
    if name == "gemma3":  # bos_token as an AddedToken dict (older transformers wrote special tokens so)
        assert cfg["bos_token"] == "<bos>", cfg["bos_token"]
        cfg["bos_token"] = {
            "__type": "AddedToken",
            "content": "<bos>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        cfg_path.write_text(config_json(cfg), encoding="utf-8")
    for f in d.iterdir():
        f.chmod(0o644)


def check_loaded(name: str, d: Path) -> tuple[PreTrainedTokenizerFast, Tokenizer]:
    """AutoTokenizer reads the directory back with the template, the special tokens as strings and the same
    tokenization as plain ``tokenizers``; every special token of the family is one token."""
    fx = FIXTURES[name]
    loaded = AutoTokenizer.from_pretrained(d)
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert loaded.chat_template == fx.template, name
    for key in ("bos_token", "eos_token", "pad_token"):
        got = getattr(loaded, key)
        assert got == fx.tokens.get(key) and (got is None or isinstance(got, str)), (name, key, got)
    specials = {"chatml": CHATML_SPECIALS, "gemma3": GEMMA_SPECIALS}.get(name, LLAMA3_SPECIALS)
    for t in specials:
        assert raw.encode(t, add_special_tokens=False).ids == [raw.token_to_id(t)], (name, t)
        assert raw.get_added_tokens_decoder()[raw.token_to_id(t)].special, (name, t)
    assert len(loaded) == raw.get_vocab_size(with_added_tokens=True), name
    sample = "To be, or not to be: that is the question.\n"
    assert loaded(sample)["input_ids"] == raw.encode(sample).ids, name
    if name in ("llama3", "llama31", "gemma3"):  # the post-processor prepends the BOS (the templates write it too)
        assert raw.encode(sample).ids[0] == raw.token_to_id(fx.tokens["bos_token"]), name
    else:
        assert raw.encode(sample).ids == raw.encode(sample, add_special_tokens=False).ids, name
    assert (d / "tokenizer.json").stat().st_size < MAX_TOKENIZER_BYTES, (name, (d / "tokenizer.json").stat().st_size)
    return loaded, raw


def expected_span(fx: Fixture, content: str) -> str:
    return (content.strip() if fx.trims else content) + fx.end


def reference_case(
    name: str, loaded: PreTrainedTokenizerFast, raw: Tokenizer, gen: str, case: str, messages: list[dict]
) -> tuple[dict, str]:
    """One entry of reference.json's "cases" and a note on tokens that cross a span edge ("" if none)."""
    fx = FIXTURES[name]
    text = loaded.apply_chat_template(messages, tokenize=False)
    text_gp = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text_gp.startswith(text) and text_gp != text, (name, case)
    ids = list(loaded.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    encoding = raw.encode(text, add_special_tokens=False)
    assert ids == loaded(text, add_special_tokens=False)["input_ids"] == encoding.ids, (name, case)
    # the tagged template renders exactly the real one's text and ids
    for add_gp, want in ((False, text), (True, text_gp)):
        got = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_gp, chat_template=gen)
        assert got == want, (name, case, add_gp, got, want)
    out = loaded.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=gen
    )
    assert list(out["input_ids"]) == ids, (name, case)
    mask = [int(m) for m in out["assistant_masks"]]
    rendered, [spans] = render_jinja_template(
        conversations=[messages], chat_template=gen, return_assistant_tokens_mask=True, **loaded.special_tokens_map
    )
    assert rendered == [text], (name, case)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [text[s:e] for s, e in spans] == [expected_span(fx, c) for c in replies], (name, case, spans)
    assert (1 in mask) == bool(replies) and len(mask) == len(ids), (name, case)
    if "bos_token" in fx.tokens:  # written once, by the template (gemma3's bos_token is an AddedToken dict on disk)
        bos = fx.tokens["bos_token"]
        assert text.startswith(bos) and text.count(bos) == 1 and ids[0] == raw.token_to_id(bos), (name, case)
        assert ids.count(ids[0]) == 1, (name, case)
    # the mask is "every token whose character range overlaps a span" (transformers' rule), recomputed here
    offsets = encoding.offsets
    recomputed = [int(any(a < e and b > s for s, e in spans)) for a, b in offsets]
    assert recomputed == mask, (name, case, recomputed, mask)
    notes = []
    for i, (a, b) in enumerate(offsets):
        inside = [(s, e) for s, e in spans if a < e and b > s]
        if inside and not all(s <= a and b <= e for s, e in inside):
            notes.append(f"token {i} {encoding.tokens[i]!r} chars [{a}, {b}) {text[a:b]!r} crosses span {inside}")
    entry = {
        "name": case,
        "messages": messages,
        "text": text,
        "text_generation_prompt": text_gp,
        "ids": ids,
        "assistant_mask": mask,
        "assistant_spans": [list(span) for span in spans],
    }
    return entry, "; ".join(notes)


def dumps(obj) -> str:
    """JSON, indent 2, with lists of numbers (ids, masks, spans) on one line."""

    def one_line(match: re.Match) -> str:
        return "[" + ", ".join(item.strip() for item in match.group(0)[1:-1].split(",")) + "]"

    return re.sub(r"\[\n[\s\d,]*\]", one_line, json.dumps(obj, indent=2, ensure_ascii=False)) + "\n"


def template_error(loaded: PreTrainedTokenizerFast, messages: list[dict], template: str | None) -> str | None:
    """The message of the TemplateError rendering ``messages`` raises (``raise_exception``), or None."""
    try:
        loaded.apply_chat_template(messages, tokenize=False, chat_template=template)
    except jinja2.exceptions.TemplateError as err:
        return str(err)
    return None


def build(name: str, tok: Tokenizer) -> dict:
    d = OUT / name
    d.mkdir(parents=True)
    save(name, tok, d)
    loaded, raw = check_loaded(name, d)
    gen = generation_template(name)
    cases, rejected, notes = [], [], {}
    for case, messages in CASES:
        error = template_error(loaded, messages, None)
        assert template_error(loaded, messages, gen) == error, (name, case)  # the tagged template raises the same
        if error is not None:
            rejected.append({"name": case, "messages": messages, "error": error})
            continue
        entry, note = reference_case(name, loaded, raw, gen, case, messages)
        cases.append(entry)
        if note:
            notes[case] = note
    ref = {
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "template_source": TEMPLATE_SOURCES[name],
        "generation_template": gen,
        "cases": cases,
        "rejected": rejected,
    }
    (d / "reference.json").write_text(dumps(ref), encoding="utf-8")
    (d / "reference.json").chmod(0o644)
    return {"cases": len(cases), "rejected": [r["name"] for r in rejected], "notes": notes, "vocab": len(loaded)}


def bullet(text: str) -> str:
    """A markdown list item wrapped at 116 columns (paths and URLs kept whole)."""
    return textwrap.fill(f"- {text}", width=116, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    transformers.utils.logging.disable_progress_bar()
    for name, fx in FIXTURES.items():
        assert hashlib.sha256(fx.template.encode()).hexdigest() == TEMPLATE_SHA256[name], f"{name}: template edited"
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    chunks = corpus_chunks()
    llama = llama3_tokenizer(chunks)
    toks = {"chatml": chatml_tokenizer(chunks), "llama3": llama, "llama31": llama, "gemma3": gemma3_tokenizer()}
    infos = {}
    for name in NAMES:
        info = infos[name] = build(name, toks[name])
        sizes = ", ".join(f"{f.name} {f.stat().st_size}" for f in sorted((OUT / name).iterdir()))
        print(f"{name:8s} vocab={info['vocab']} cases={info['cases']} rejected={info['rejected']}  ({sizes})")
        for case, note in info["notes"].items():
            print(f"         {case}: {note}")
    (OUT / "README.md").write_text(readme(infos), encoding="utf-8")
    (OUT / "README.md").chmod(0o644)
    total = dir_size(OUT)
    print(f"total size of {OUT.relative_to(ROOT)}: {total} bytes ({total / 1024:.1f} KiB)")
    if total > MAX_TOTAL_KIB * 1024:
        sys.exit("fixtures too large")


def readme(infos: dict) -> str:
    rows = []
    for name in NAMES:
        d, info = OUT / name, infos[name]
        files = ", ".join(f"`{f.name}` {f.stat().st_size}" for f in sorted(d.iterdir()))
        stored = "`chat_template.jinja`" if FIXTURES[name].jinja_file else "tokenizer_config.json"
        rejected = ", ".join(f"`{r}`" for r in info["rejected"]) or "none"
        rows.append(f"| `{name}` | {info['vocab']} | {info['cases']} | {rejected} | {stored} | {files} |")
    sources = "\n".join(bullet(f"`{name}`: {TEMPLATE_SOURCES[name]}") for name in NAMES)
    edges = [f"`{name}` `{case}`: {note}" for name in NAMES for case, note in infos[name]["notes"].items()]
    return README.format(
        transformers=transformers.__version__,
        tokenizers=tokenizers.__version__,
        jinja2=jinja2.__version__,
        rows="\n".join(rows),
        sources=sources,
        edges="\n".join(bullet(e) for e in edges) or "- none",
    )


README = """\
# Chat-template fixtures

Tiny tokenizers carrying the real chat templates of Qwen2.5-Instruct (`chatml`), Meta-Llama-3-8B-Instruct
(`llama3`), Llama-3.1-8B-Instruct (`llama31`) and gemma-3-1b-it (`gemma3`), and what transformers'
`apply_chat_template` makes of eleven conversations with them, for the tests of `jaxformer/data/chat.py`.
Made with transformers {transformers}, tokenizers {tokenizers}, jinja2 {jinja2}.

Each `<name>/` holds `tokenizer.json` (chatml: byte-level BPE laid out as Qwen2.5's, NFC + Qwen's split regex;
llama3 / llama31: byte-level BPE laid out as Llama 3's, its post-processor prepending `<|begin_of_text|>`; both
trained on tinyshakespeare.txt, 400 entries + the family's special tokens; gemma3: the Gemma-style byte-fallback BPE
of `tests/fixtures/pretrained/gemma3/` + `<start_of_turn>` / `<end_of_turn>`), `tokenizer_config.json` as
`save_pretrained` writes it (gemma3's `bos_token` rewritten as an AddedToken dict), the template (verbatim) in
`chat_template.jinja` or in tokenizer_config.json's `"chat_template"`, and `reference.json`:
`transformers_version`, `tokenizers_version`, `template_source`, `generation_template` (the template with
`{{% generation %}}` around each assistant message's content and end-of-turn marker, not the newline after it nor
the header before it), `cases` (`name`, `messages`, `text`, `text_generation_prompt`, `ids`, `assistant_mask`, and
`assistant_spans`: the character spans of `text` the generation blocks rendered) and `rejected` (conversations the
template raises on, with the error).

| fixture | vocab | cases | rejected | template in | files (bytes) |
|---|---|---|---|---|---|
{rows}

The masks are transformers': a token is 1 iff its character offsets overlap a generation span, so a token
straddling a span edge counts as an assistant token. Tokens that straddle an edge in these cases:

{edges}

Offsets are in characters; every byte token of a multi-byte character (byte-level or `<0xXX>` byte fallback)
carries the whole character's offsets. chatml's NFC normalizer maps "e" + U+0301 to "é", whose byte tokens get the
offsets of the "e" alone, leaving the combining mark's character with no token.

Where each template came from (no network: copies found in public source code):

{sources}

Made by `experiments/make_chat_fixtures.py` (its docstring describes every file and check). Regenerate with

    .venv/bin/python experiments/make_chat_fixtures.py

Reading these files needs neither transformers nor torch.
"""


if __name__ == "__main__":
    main()
