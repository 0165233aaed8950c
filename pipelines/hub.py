"""One Hub repo per checkpoint that serves transformers, both `pipeline()` tasks and diffusers.

Layout (docs/adr-0001-hub-repo-layout.md explains the choices):

    config.json, generation_config.json, model.safetensors        AutoModel / AutoModelForImageTextToText
    configuration_harmon.py, modeling_harmon*.py                  remote code (auto_map)
    tokenizer files, processor_config.json, chat_template.jinja,
    processing_harmon.py, image_processing_harmon.py              AutoProcessor / AutoTokenizer
    pipeline_text_to_image_harmon.py (+ config.custom_pipelines)  pipeline("text-to-image")
    model_index.json, pipeline_harmon.py                          diffusers (list-form _class_name)
    pipeline_harmon_inpaint.py                                    diffusers, custom_pipeline="pipeline_harmon_inpaint"
    pipeline_harmon_edit.py                                       diffusers, custom_pipeline="pipeline_harmon_edit"
    model/   byte-identical copies of the root model files        diffusers component `model`
    tokenizer/  byte-identical copies of the root tokenizer files diffusers component `tokenizer`
    README.md                                                     model card

The Hub and the local cache store a file once per content hash, so the component copies cost no storage.
"""

import fnmatch
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from harmon_model_cards import REPO_PLACEHOLDER, write_model_card
from modeling_harmon.output_folders import MARKER, replace_folder
from modeling_harmon.pipeline_harmon import HarmonPipeline
from modeling_harmon.pipeline_harmon_edit import HarmonImageEditPipeline
from modeling_harmon.pipeline_harmon_inpaint import HarmonInpaintPipeline
from modeling_harmon.pipeline_text_to_image_harmon import HarmonTextToImagePipeline
from modeling_harmon.processing_harmon import HarmonProcessor


MODEL_COMPONENT = "model"
TOKENIZER_COMPONENT = "tokenizer"
# What `model.save_pretrained` writes (weights, possibly sharded, config, generation config, model code with the
# files it imports: the processor formats text-to-image prompts); the diffusers `model/` component needs these.
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "configuration_harmon.py",
    "modeling_harmon*.py",
    "processing_harmon.py",
    "image_processing_harmon.py",
)


def _link_or_copy(source: Path, target: Path) -> None:
    """Same bytes under a second name: a hard link where the filesystem allows it, else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_hub_files(
    folder: str | os.PathLike,
    model,
    tokenizer,
    processor: HarmonProcessor | None = None,
    card_writer: Callable[[Path], None] | None = None,
) -> Path:
    """Write the whole repo layout into `folder` (created if needed; existing files of the same names are
    replaced). `processor` defaults to one matching the model (image size: the checkpoint's default generation size,
    else `config.image_size`). `card_writer(folder)` writes README.md; the default renders the standard Harmon card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # transformers keeps a tokenizer's load-time `local_files_only` (True whenever HF_HUB_OFFLINE=1) among its init
    # kwargs and saves it: the written files would depend on the environment of the export, not on the model.
    for loaded in (tokenizer, getattr(processor, "tokenizer", None)):
        if loaded is not None:
            loaded.init_kwargs.pop("local_files_only", None)

    model.save_pretrained(folder)
    model_files = sorted({path.name for pattern in MODEL_FILE_PATTERNS for path in folder.glob(pattern)})

    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = HarmonTextToImagePipeline.custom_pipelines_entry()
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    if processor is None:
        # The understanding image size follows the checkpoint's default generation size when one is set.
        defaults = getattr(model.generation_config, "image_generation", None) or {}
        size = defaults.get("height") if defaults.get("height") == defaults.get("width") else None
        processor = HarmonProcessor.from_model_config(model.config, tokenizer, image_size=size)
    processor.save_pretrained(folder)
    # `model_index.json` names HarmonPipeline; the inpaint and edit pipelines are the repo's second and third diffusers
    # pipelines, loaded by file name (see pipeline_harmon_inpaint.py).
    for module in (HarmonTextToImagePipeline, HarmonPipeline, HarmonInpaintPipeline, HarmonImageEditPipeline):
        source = Path(sys.modules[module.__module__].__file__)
        shutil.copyfile(source, folder / source.name)

    # diffusers components: the same bytes as the root files.
    model_dir = folder / MODEL_COMPONENT
    model_dir.mkdir(exist_ok=True)
    for name in model_files:
        _link_or_copy(folder / name, model_dir / name)
    adapter = getattr(model.config, "understanding_adapter", None)
    if adapter and (folder / adapter).is_dir():  # the model component loads its understanding adapter too
        (model_dir / adapter).mkdir(parents=True, exist_ok=True)
        for path in (folder / adapter).iterdir():
            _link_or_copy(path, model_dir / adapter / path.name)
    tokenizer_dir = folder / TOKENIZER_COMPONENT
    tokenizer.save_pretrained(tokenizer_dir)
    for path in tokenizer_dir.iterdir():
        if (folder / path.name).is_file():
            _link_or_copy(folder / path.name, path)
    pipeline = HarmonPipeline(model=model, tokenizer=tokenizer)
    index = pipeline.model_index()
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    (card_writer or write_model_card)(folder)
    return folder


def save_hub_folder(folder: str | os.PathLike, model, tokenizer, overwrite: bool = False, **kwargs) -> Path:
    """[`write_hub_files`] into a temporary sibling folder renamed at the end: an interrupted export never leaves a
    half-written `folder`. An existing `folder` is replaced only if a harmon writer made it and `overwrite` is set
    (`modeling_harmon.output_folders`)."""
    with replace_folder(folder, "harmon save_hub_folder", overwrite, argument="folder") as staging:
        write_hub_files(staging, model, tokenizer, **kwargs)
    return Path(folder)


def check_hub_folder(folder: str | os.PathLike) -> list[str]:
    """Problems that would break a loader of the layout above (empty list: none)."""
    folder = Path(folder)
    problems = []
    required = [
        "config.json",
        "model_index.json",
        "processor_config.json",
        "README.md",
        "pipeline_harmon.py",
        "pipeline_harmon_inpaint.py",
        "pipeline_harmon_edit.py",
        "pipeline_text_to_image_harmon.py",
        "processing_harmon.py",
        "image_processing_harmon.py",
    ]
    problems += [f"missing {name}" for name in required if not (folder / name).is_file()]
    needed = {
        MODEL_COMPONENT: ["config.json", "modeling_harmon.py", "configuration_harmon.py"],
        TOKENIZER_COMPONENT: ["tokenizer_config.json"],
    }
    for component in (MODEL_COMPONENT, TOKENIZER_COMPONENT):
        directory = folder / component
        if not directory.is_dir():
            problems.append(f"missing {component}/")
            continue
        problems += [f"missing {component}/{name}" for name in needed[component] if not (directory / name).is_file()]
        if component == MODEL_COMPONENT and not any(directory.glob("*.safetensors")):
            problems.append(f"missing {component}/*.safetensors (the weights)")
        for path in sorted(directory.iterdir()):
            root = folder / path.name
            if root.is_file() and root.read_bytes() != path.read_bytes():
                problems.append(f"{component}/{path.name} differs from the root {path.name}")
    problems += _adapter_problems(folder)
    return problems


def _adapter_problems(folder: Path) -> list[str]:
    """The understanding adapter the config names (`config.understanding_adapter`): its files at the root and, when
    the folder has its diffusers model component, the same bytes there."""
    try:
        adapter = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("understanding_adapter")
    except (OSError, ValueError, AttributeError):
        return []  # a missing or unreadable config.json is reported (or fails loading) on its own
    if not adapter:
        return []
    problems = []
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        root = folder / adapter / name
        if not root.is_file():
            problems.append(f"missing {adapter}/{name} (config.understanding_adapter)")
            continue
        copy = folder / MODEL_COMPONENT / adapter / name
        if (folder / MODEL_COMPONENT).is_dir() and (not copy.is_file() or copy.read_bytes() != root.read_bytes()):
            problems.append(f"{MODEL_COMPONENT}/{adapter}/{name} is missing or differs from the root {adapter}/{name}")
    return problems


def is_compact_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a whole model (config, weights, tokenizer, processor, card) and lacks only the parts of
    the layout that are derived from it: the remote code, `model_index.json` and the diffusers components. The
    embedded Shapes model ships that way (`training.shapes.export_default`), to keep the wheel small."""
    return _is_compact(Path(folder), check_hub_folder(folder))


def _is_compact(folder: Path, problems: list[str]) -> bool:
    """[`is_compact_folder`] given the folder's [`check_hub_folder`] problems (which read every component file, so
    a caller that has them should not pay for them twice)."""
    derived = {
        "model_index.json",
        "pipeline_harmon.py",
        "pipeline_harmon_inpaint.py",
        "pipeline_harmon_edit.py",
        "pipeline_text_to_image_harmon.py",
        "processing_harmon.py",
        "image_processing_harmon.py",
        f"{MODEL_COMPONENT}/",
        f"{TOKENIZER_COMPONENT}/",
    }
    own = ["config.json", "processor_config.json", "tokenizer_config.json", "README.md"]
    return (
        bool(problems)
        and all(problem.startswith("missing ") and problem[len("missing ") :] in derived for problem in problems)
        and all((folder / name).is_file() for name in own)
        and any(folder.glob("model*.safetensors"))
    )


def complete_hub_folder(folder: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the full layout of `folder`, a compact folder (see [`is_compact_folder`]), into `output`, atomically (an
    existing `output` is replaced only if a harmon writer made it and `overwrite` is set). The files `folder` has are kept byte for byte, its model card included; `folder` itself
    is not changed. Raises `ValueError` for a folder that is not compact."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder)
    if not is_compact_folder(folder):
        problems = "; ".join(check_hub_folder(folder)) or "nothing is missing"
        raise ValueError(f"folder {str(folder)!r} is not a compact Harmon folder to complete ({problems}).")
    # `dtype="auto"`: the weights are saved again in the dtype they were stored in, so they keep their bytes.
    model = AutoModel.from_pretrained(folder, dtype="auto", trust_remote_code=False)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    processor = HarmonProcessor.from_pretrained(folder, trust_remote_code=False)

    def keep_card(staging: Path) -> None:
        shutil.copyfile(folder / "README.md", staging / "README.md")

    with replace_folder(output, "harmon complete_hub_folder", overwrite, [folder], argument="output") as staging:
        write_hub_files(staging, model, tokenizer, processor=processor, card_writer=keep_card)
        # Saving again may format a file differently (a newer library version, say); what the folder has wins, and
        # the components are linked again so that they stay copies of the root.
        for path in folder.iterdir():
            if path.is_file() and path.name != MARKER:  # the marker names the writer of this folder
                shutil.copyfile(path, staging / path.name)
        for component in (MODEL_COMPONENT, TOKENIZER_COMPONENT):
            for path in (staging / component).iterdir():
                if (staging / path.name).is_file():
                    _link_or_copy(staging / path.name, path)
        problems = check_hub_folder(staging)
        if problems:
            raise ValueError(f"completing {str(folder)!r} left problems: {'; '.join(problems)}.")
    return Path(output)


# Never published: pickles (a training folder's `training_args.bin`, optimizer and RNG states; loading a pickle can run
# code) and harmon's own output marker.
PUSH_IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", MARKER]


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in PUSH_IGNORE_PATTERNS)


def _staging_copy(folder: Path, staging: Path) -> Path:
    """`folder`'s publishable files under `staging`: hard links where the filesystem allows it (no copy of the
    weights), copies otherwise; the card is a real copy, since it may be rewritten."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(_ignored(part) for part in relative.parts) or path.is_dir():
            continue
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative == Path("README.md"):
            shutil.copyfile(path, target)
        else:
            _link_or_copy(path, target)
    return staging


def card_for_repo(folder: str | os.PathLike, repo_id: str) -> str | None:
    """The card `harmon push` publishes for `folder/README.md` when that card still shows the repo placeholder (an
    exported card does not know its repo yet): rendered again with `repo_id`, so that its snippets name the real
    repo, with the measured results `harmon eval report` merged into it carried over (values, runs, source URL, the
    placeholder in that URL replaced). None when the card names its repo already (published as it is).
    `folder/README.md` is rewritten in the process: give a copy (push gives its staging folder). Raises `ValueError`
    when the card's measured results cannot be carried over, rather than publish the card without them."""
    from .evaluation.report import CardError, carry_measured_results

    readme = Path(folder) / "README.md"
    exported = readme.read_text(encoding="utf-8")
    if REPO_PLACEHOLDER not in exported:
        return None
    write_model_card(folder, repo_id=repo_id)
    try:
        return carry_measured_results(
            exported, readme.read_text(encoding="utf-8"), url_replace=(REPO_PLACEHOLDER, repo_id)
        )
    except CardError as error:
        raise ValueError(
            f"README.md shows the repo placeholder {REPO_PLACEHOLDER!r}, so `harmon push` renders the card again for "
            f"{repo_id}, but the measured results in it cannot be carried over ({error}); render the card with its "
            "repo id (harmon_model_cards.write_model_card) and run `harmon eval report` on that card instead"
        ) from None


def push_hub_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    api=None,
):
    """Create `repo_id` (if needed) and upload `folder` to it with `huggingface_hub`; returns the commit info.

    Everything is checked before anything is written or sent: the repo id, then the folder's layout. `folder` itself
    is never changed: the upload is made from a temporary copy (hard links), where the card gets the real repo id
    ([`card_for_repo`]: a card rendered again keeps the results `harmon eval report` merged in) and a compact
    folder (the embedded Shapes model, see [`is_compact_folder`]) is completed first ([`complete_hub_folder`]). Any
    other folder without the full layout is refused, so a half-exported folder is never published. Pickles (`training_args.bin`, optimizer states) and harmon's marker file are not uploaded.
    """
    import tempfile

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("it needs a namespace")
    except HFValidationError as error:
        raise ValueError(
            f"repo_id must look like ORG/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}: {error}"
        ) from None
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder must be an exported Harmon folder, got {str(folder)!r} (not a directory).")
    problems = check_hub_folder(folder)
    compact = _is_compact(folder, problems)
    if problems and not compact:
        raise ValueError(f"{folder} is not a complete Harmon Hub folder: {'; '.join(problems)}.")
    with tempfile.TemporaryDirectory(prefix="harmon-push-") as scratch:
        staging = Path(scratch) / folder.name
        if compact:
            complete_hub_folder(folder, staging)
        else:
            _staging_copy(folder, staging)
        for path in staging.rglob("*"):
            if _ignored(path.name):
                path.unlink()
        card = card_for_repo(staging, repo_id)
        if card is not None:
            (staging / "README.md").write_text(card, encoding="utf-8", newline="")
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(staging),
            revision=revision,
            commit_message=commit_message or "Upload Harmon checkpoint",
            repo_type="model",
            ignore_patterns=PUSH_IGNORE_PATTERNS,
        )
