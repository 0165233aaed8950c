"""`harmon demo` (the web demo, on this machine) and `harmon space export` (the same demo as a Hugging Face Space).

    harmon demo                                         # the embedded Shapes model, http://127.0.0.1:7860
    harmon demo --model path/or/org-name --port 8080
    harmon space export my-space/ --model org-name/harmon-model

`harmon demo` serves `harmon_pipelines.app` (Gradio; install it with `pip install "harmon-hf[demo]"`) on the
loopback address unless `--host` says otherwise, and fetches nothing from the internet: no analytics, no fonts.
`--share` is the exception: Gradio then downloads its tunnel binary and relays the page through its share server
(it needs the network, and anyone with the link can use the demo). The model loads through this package's classes;
`--trust-remote-code` lets transformers run the model repo's own code instead.

`harmon space export DIR --model REPO_ID` writes a Space folder: `app.py` (the demo of REPO_ID), `README.md`
(the Space's YAML: `sdk: gradio`, its version pinned to the Gradio installed here), `requirements.txt` (this
package's dependencies) and the demo's code, vendored (`modeling_harmon/` and three files of `harmon_pipelines/`):
harmon-hf is not on PyPI, and the copy is the code that was tested here, with no repository to reach. Upload it with
`hf upload ORG/SPACE DIR --repo-type space`. DIR follows the package's folder rules: a new or empty folder, or an
earlier export with `--overwrite`; a folder holding other files is never replaced.
"""

import argparse
import ipaddress
import json
import sys
from importlib import metadata
from pathlib import Path

from modeling_harmon.output_folders import check_output_folder, replace_folder

from .cli import CommandError, _load, _reason, check_device
from .default_model import load_processor


# The files of harmon_pipelines the Space needs (app.py imports only these and modeling_harmon).
VENDORED_PIPELINE_FILES = ("__init__.py", "app.py", "default_model.py")
DISTRIBUTION = "harmon-hf"
SPACE_APP = '''"""The Harmon web demo of {model}: a Hugging Face Space written by `harmon space export` (harmon-hf {version}).

The demo's code is vendored next to this file (modeling_harmon/, harmon_pipelines/), since harmon-hf is not on PyPI.
Locally: `pip install -r requirements.txt "gradio=={gradio}" && python app.py`, then open http://127.0.0.1:7860.
"""

import os


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from harmon_pipelines.app import HarmonDemo, launch  # noqa: E402


MODEL = {model!r}

# This package's classes load the model: no code from the model repo runs.
demo = HarmonDemo.load(MODEL)

if __name__ == "__main__":
    launch(demo)  # host: GRADIO_SERVER_NAME (a Space sets 0.0.0.0), else 127.0.0.1
'''
SPACE_README = """---
title: {title_yaml}
emoji: 🎨
colorFrom: indigo
colorTo: pink
sdk: gradio
sdk_version: {gradio}
python_version: "3.11"
app_file: app.py
pinned: false
license: apache-2.0
models:
- {model_yaml}
short_description: "Harmon: text-to-image, questions, inpainting, editing"
---

# {title}

The web demo of the Harmon model [`{model}`]({model_link}): draw an image from a prompt (the masked-autoregressive
reveal is shown live), ask questions about a picture, inpaint or outpaint it, edit it by an instruction.

Written by `harmon space export` (harmon-hf {version}). The demo's code is vendored here (`modeling_harmon/`,
`harmon_pipelines/`, Apache-2.0): harmon-hf is not on PyPI. `requirements.txt` installs its dependencies; the Space
installs Gradio {gradio} (`sdk_version`). The model loads through the vendored classes, so no code from the model
repo runs.
"""


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in [1, 65535], got {value!r}")
    return int(value)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}")
    return int(value)


def add_demo_commands(commands, add_model_arguments) -> None:
    """`demo` and `space export`, on `commands` (the `harmon` parser's subparsers)."""
    if commands.metavar and "demo" not in commands.metavar:
        commands.metavar = commands.metavar.rstrip("}") + ",demo,space}"
    demo = commands.add_parser(
        "demo",
        help="serve the web demo (Gradio) on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(demo)
    demo.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    demo.add_argument("--port", type=_port, default=7860, help="port to listen on (default 7860)")
    demo.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load the model with the repo's own code (transformers' trust_remote_code) instead of this package's",
    )
    demo.add_argument(
        "--share",
        action="store_true",
        help="also serve a public gradio.live link: NEEDS THE NETWORK (Gradio downloads its tunnel binary) and "
        "lets anyone with the link use the demo",
    )
    demo.add_argument(
        "--queue-size", type=_positive, default=16, metavar="N", help="requests that may wait (default 16)"
    )
    demo.set_defaults(run=run_demo)

    space = commands.add_parser(
        "space",
        help="write a Hugging Face Space folder for the web demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    space_commands = space.add_subparsers(dest="space_command", required=True, metavar="{export}")
    export = space_commands.add_parser(
        "export",
        help="write the Space folder",
        description="Write a Hugging Face Space folder (app.py, README.md with `sdk: gradio`, requirements.txt, the "
        "demo's code vendored) that serves the web demo of the model repo REPO_ID.",
    )
    export.add_argument("folder", type=Path, metavar="DIR", help="the folder to write (new, empty, or an export)")
    export.add_argument(
        "--model",
        required=True,
        metavar="REPO_ID",
        help="the Hub repo of the model (a local folder works too, for trying the Space on this machine)",
    )
    export.add_argument("--title", default=None, help="the Space's title (default: Harmon demo)")
    export.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it holds an earlier export (never other files)"
    )
    export.set_defaults(run=run_space_export)


def _import_app():
    try:
        from . import app
    except ImportError as error:
        raise CommandError(
            f'the web demo needs Gradio ({_reason(error)}); install it with: pip install "harmon-hf[demo]"'
        ) from None
    return app


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_demo(args) -> None:
    check_device(args.device)
    app = _import_app()
    if args.share:
        print(
            "harmon demo: note: --share needs the network: Gradio downloads its tunnel binary and relays the page "
            "through its share server; anyone with the link can use the demo.",
            file=sys.stderr,
        )
    if not _loopback(args.host):
        print(
            f"harmon demo: note: listening on {args.host}: other machines that reach it can use the demo.",
            file=sys.stderr,
        )
    if args.trust_remote_code:
        import torch

        try:
            model, tokenizer, processor = app.load_for_demo(args.model, True, args.device, getattr(torch, args.dtype))
        except Exception as error:
            raise CommandError(f"--model {args.model!r}: cannot load it: {_reason(error)}") from None
    else:
        model, tokenizer = _load(args)
        processor = load_processor(args.model, model, tokenizer)  # None: the embedded model's
    demo = app.HarmonDemo(model, tokenizer, processor, source=args.model, queue_size=args.queue_size)
    app.launch(demo, host=args.host, port=args.port, share=args.share)


def _requirements() -> list[str]:
    """This distribution's install requirements (not its extras): what the Space's pip installs."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise CommandError(
            f"{DISTRIBUTION} is not installed (pip install -e .); its requirements are read from it"
        ) from None
    return [line for line in requires if "extra ==" not in line]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        raise CommandError(f'{name} is not installed; install it with: pip install "harmon-hf[demo]"') from None


def run_space_export(args) -> None:
    try:
        _export_space(args)
    except (CommandError, ValueError) as error:
        error.prog = "harmon space export"  # main() names the command by it
        raise


def _export_space(args) -> None:
    model = args.model.strip()
    local = Path(model).is_dir()
    if local:
        model = str(Path(model).resolve())
    else:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(model)
        except HFValidationError as error:
            raise CommandError(f"--model {args.model!r} is neither a folder nor a Hub repo id ({error})") from None
    check_output_folder(args.folder, args.overwrite, inputs=[model] if local else [], argument="DIR")
    gradio = _version("gradio")
    import harmon_pipelines
    import modeling_harmon

    version = modeling_harmon.__version__

    sources = {
        "modeling_harmon": sorted(Path(modeling_harmon.__file__).parent.glob("*.py")),
        "harmon_pipelines": [Path(harmon_pipelines.__file__).parent / name for name in VENDORED_PIPELINE_FILES],
    }
    title = " ".join((args.title or "Harmon demo").split())
    fields = {
        "model": model,
        "version": version,
        "gradio": gradio,
        "title": title,
        "title_yaml": json.dumps(title, ensure_ascii=False),  # a JSON string is a YAML string
        "model_yaml": json.dumps(model if not local else "local-folder"),
        "model_link": f"https://huggingface.co/{model}" if not local else Path(model).as_uri(),
    }
    with replace_folder(
        args.folder, "harmon space export", args.overwrite, inputs=[model] if local else [], argument="DIR"
    ) as staging:
        (staging / "app.py").write_text(SPACE_APP.format(**fields), encoding="utf-8")
        (staging / "README.md").write_text(SPACE_README.format(**fields), encoding="utf-8")
        (staging / "requirements.txt").write_text(
            f"# harmon-hf {version}'s dependencies (its code is vendored here); Gradio {gradio} comes from the "
            "README's sdk_version.\n" + "\n".join(_requirements()) + "\n",
            encoding="utf-8",
        )
        for package, files in sources.items():
            (staging / package).mkdir()
            for path in files:
                (staging / package / path.name).write_bytes(path.read_bytes())
    print(args.folder)
    if local:
        print(
            "harmon space export: note: --model is a local folder; the Space will look for it on the machine that "
            "runs it (use a Hub repo id for a real Space).",
            file=sys.stderr,
        )
