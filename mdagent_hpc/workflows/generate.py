"""One LLM generation as an AiiDA process whose `run` is a coroutine.

The HTTP call runs in a worker thread and the process awaits it, so a slow endpoint leaves the daemon
worker's event loop free for every other process (see docs/architecture.md for the measurement). The node is
a CalcFunctionNode, so the script it returns is *created* by it in the provenance graph, from the prompt and
the sampling settings. The API key is read where the process runs (environment or config file), never stored.
"""

from __future__ import annotations

import asyncio
import functools

from aiida import orm
from aiida.engine import Process

from mdagent_hpc.agent.staging import refused_name
from mdagent_hpc.llm import LLMError, LLMUnavailableError, generate, load_llm_settings
from mdagent_hpc.workflows.broker import PatientWithBroker
from mdagent_hpc.workflows.lammps_calc import node_key

# Settings that may be stored (and so passed as inputs); the API key is deliberately not among them.
STORED_SETTINGS = (
    "base_url",
    "model",
    "timeout_s",
    "max_retries",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "structured_output",
    "candidates",
    "context_tokens",
)


class LinksOnlyNewOutputs:
    """A Process mixin: AiiDA asks the database for the node's outgoing links on every state change, to attach the
    outputs emitted since; this skips that query when nothing was emitted (most state changes)."""

    def update_outputs(self) -> None:
        emitted = len(self._flat_outputs())
        if emitted != getattr(self, "_outputs_linked", -1):  # -1: not known, e.g. just restored from a checkpoint
            super().update_outputs()
            self._outputs_linked = emitted


class GenerateScript(PatientWithBroker, LinksOnlyNewOutputs, Process):
    _node_class = orm.CalcFunctionNode

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("messages", valid_type=orm.List, help="the chat messages sent to the model")
        spec.input("settings", valid_type=orm.Dict, help="endpoint and sampling settings (no secrets)")
        spec.input(
            "grammar",
            valid_type=orm.Str,
            required=False,
            help="the site's LAMMPS grammar (llm.grammar), used when structured_output is grammar",
        )
        spec.output("script", valid_type=orm.SinglefileData, required=False, help="the first answer's script")
        spec.output_namespace("files", valid_type=orm.SinglefileData, dynamic=True, required=False)
        spec.output_namespace(
            "candidates",
            valid_type=orm.SinglefileData,
            dynamic=True,
            required=False,
            help="with candidates > 1, answer N's script as candidate_N (N from 2), its files as "
            "candidate_N_file_<name>",
        )
        spec.output("response", valid_type=orm.Dict, help="raw answers, model, usage, latency, problems")
        spec.exit_code(300, "ERROR_LLM_UNAVAILABLE", message="the LLM endpoint failed: {kind}: {message}")
        spec.exit_code(310, "ERROR_NO_SCRIPT", message="the answer held no usable script")

    def _build_process_label(self) -> str:
        return "generate_script"

    async def run(self):
        overrides = {k: v for k, v in self.inputs.settings.get_dict().items() if k in STORED_SETTINGS}
        messages = self.inputs.messages.get_list()
        grammar = self.inputs.grammar.value if "grammar" in self.inputs else None
        try:
            settings = load_llm_settings(overrides)
            call = functools.partial(generate, settings, messages, grammar=grammar)
            generation = await asyncio.get_running_loop().run_in_executor(None, call)
        except LLMUnavailableError as exc:
            self.out("response", orm.Dict({"error": exc.kind, "message": str(exc)}))
            return self.exit_codes.ERROR_LLM_UNAVAILABLE.format(kind=exc.kind, message=str(exc))
        except LLMError as exc:
            self.out("response", orm.Dict({"error": "config", "message": str(exc)}))
            return self.exit_codes.ERROR_LLM_UNAVAILABLE.format(kind="config", message=str(exc))
        response = generation.model_dump(mode="json", exclude={"messages": True, "choices": {"__all__": {"script"}}})
        # A file is written into the run folder under its name: only plain names inside it.
        for number, (choice, record) in enumerate(zip(generation.choices, response["choices"], strict=True), 1):
            files = choice.script.files if choice.script else {}
            record["refused_files"] = [n for n in files if refused_name(n)]
            if choice.script is None:
                continue
            script = orm.SinglefileData.from_string(choice.script.script, filename="in.lammps")
            prefix = "" if number == 1 else f"candidates.candidate_{number}"
            self.out(prefix or "script", script)
            for name, content in files.items():
                if name not in record["refused_files"]:
                    key = f"{prefix}_file_{node_key(name)}" if prefix else f"files.{node_key(name)}"
                    self.out(key, orm.SinglefileData.from_string(content, filename=name))
        # The first answer's reading at the top, as for a single answer.
        first = response["choices"][0]
        response |= {k: first[k] for k in ("raw_response", "finish_reason", "problems", "refused_files")}
        self.out("response", orm.Dict(response))
        if not any(choice.script for choice in generation.choices):
            return self.exit_codes.ERROR_NO_SCRIPT
        return None
