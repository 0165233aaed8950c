"""diffusers pipeline for Harmon text-to-image generation.

Harmon has no diffusers scheduler or denoiser: the image is built by masked autoregression (MAR encoder -> LLM ->
MAR decoder -> diffusion-MLP head) inside the transformers model, and the KL VAE is the model's own `vae`. This
pipeline gives that loop the diffusers interface (prompts, generators, callbacks, output types, offload,
save/load); the sampling itself stays in `HarmonForConditionalGeneration.generate_images` so both entry points
produce the same images.

The file is uploaded to the Hub as a custom pipeline (`model_index.json` names it in list form), so it imports
only torch, transformers and diffusers.
"""

import contextlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from transformers import PreTrainedModel, PreTrainedTokenizerBase


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from harmon_pipelines import HarmonPipeline  # Hub users: DiffusionPipeline + trust_remote_code

        >>> pipe = HarmonPipeline.from_pretrained("path/or/repo")
        >>> image = pipe("a red circle on the left", generator=torch.Generator().manual_seed(0)).images[0]
        >>> image.save("harmon.png")
        ```
"""

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class HarmonPipelineOutput(ImagePipelineOutput):
    """`images` as diffusers' pipelines return them; `descriptions`: with `prompt_mode="describe"`, the model's
    restatement of each prompt (what it drew, one per prompt), else None."""

    descriptions: list[str] | None = None


class HarmonPipeline(DiffusionPipeline):
    r"""
    Text-to-image generation with Harmon (masked autoregression in MAR token space + a diffusion-MLP head): the
    diffusers pipeline, named as diffusers names a model's text-to-image pipeline (`FluxPipeline`). The pipelines of
    image-conditioned generation follow the same scheme: `HarmonInpaintPipeline` (inpainting, outpainting and
    variations) and `HarmonImageEditPipeline` (instruction editing); see docs/adr-0003-image-inputs.md for the names of
    their image inputs.

    Args:
        model ([`HarmonForConditionalGeneration`]): the Harmon model; its `vae` decodes the latents.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): the model's tokenizer.
    """

    model_cpu_offload_seq = "model"
    _callback_tensor_inputs = ["latents", "mask"]

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.register_modules(model=model, tokenizer=tokenizer)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)
        self._canvas = {}  # image-conditioned inputs of a subclass's call (pipeline_harmon_inpaint.py)
        self._context = {}  # images the LLM sees in the prompt, of a subclass's call (pipeline_harmon_edit.py)

    # ------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "HarmonPipeline":
        """Load `model/` and `tokenizer/` of a pipeline folder or Hub repo with this class.

        diffusers would route any repo whose `model_index.json` names a custom pipeline file through remote code,
        even when this class is already imported from the pip package; loading the two components directly keeps
        the pip class (and lets pip users skip `trust_remote_code`). Hub users without the package call
        `DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)` instead, which reads the same files.

        Accepts `model=` / `tokenizer=` to reuse loaded components, `torch_dtype` (or `dtype`), `trust_remote_code`, and the Hub
        arguments `revision`, `cache_dir`, `local_files_only`, `token`, `force_download`. `trust_remote_code`
        defaults to False (never None, which lets transformers prompt on a terminal) and applies to the model and
        the tokenizer.
        """
        from transformers import AutoModel, AutoTokenizer

        model = kwargs.pop("model", None)
        tokenizer = kwargs.pop("tokenizer", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        if "dtype" in kwargs:  # diffusers' newer name for torch_dtype
            torch_dtype = kwargs.pop("dtype")
        trust_remote_code = kwargs.pop("trust_remote_code", False)
        if not isinstance(trust_remote_code, bool):
            raise TypeError(f"trust_remote_code must be True or False, got {trust_remote_code!r}.")
        hub_names = ("revision", "cache_dir", "local_files_only", "token", "force_download")
        hub = {name: kwargs.pop(name) for name in hub_names if name in kwargs}
        if kwargs:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got unexpected arguments {sorted(kwargs)}; allowed: model, "
                f"tokenizer, torch_dtype, dtype, trust_remote_code, {', '.join(hub_names)}."
            )
        source = str(pretrained_model_name_or_path)
        if model is None:
            if torch_dtype is not None:
                hub["dtype"] = torch_dtype
            model = AutoModel.from_pretrained(source, subfolder="model", trust_remote_code=trust_remote_code, **hub)
            hub.pop("dtype", None)
        if tokenizer is None:
            # The model's config spares AutoTokenizer a look for `tokenizer/config.json`, which does not exist.
            tokenizer = AutoTokenizer.from_pretrained(
                source, subfolder="tokenizer", config=model.config, trust_remote_code=trust_remote_code, **hub
            )
        return cls(model=model.eval(), tokenizer=tokenizer)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs) -> "HarmonPipeline":
        """diffusers' `from_pipe` (this class over `pipeline`'s components, e.g. `HarmonInpaintPipeline.from_pipe(pipe)`),
        except that the dtype defaults to `pipeline`'s: diffusers casts to float32 when none is given, and the model is
        shared, so a bfloat16 `pipeline` would silently become float32 too."""
        if kwargs.get("torch_dtype") is None and kwargs.get("dtype") is None:
            kwargs.pop("torch_dtype", None)
            kwargs["dtype"] = pipeline.dtype
        return super().from_pipe(pipeline, **kwargs)

    def model_index(self) -> dict:
        """`model_index.json` content: this file's pipeline class in list form and the model's code file, so
        diffusers loads both as remote code from the repo."""
        import diffusers

        this_file = Path(sys.modules[type(self).__module__].__file__)
        model_file = Path(sys.modules[type(self.model).__module__].__file__)
        return {
            "_class_name": [this_file.stem, type(self).__name__],
            "_diffusers_version": diffusers.__version__,
            "model": [model_file.stem, type(self.model).__name__],
            "tokenizer": list(self.config["tokenizer"]),
        }

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' layout (`model_index.json`, `model/`, `tokenizer/`) plus this class's file at the root (and its
        base classes' files), named in list form in `model_index.json`, so
        `DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)` works where the pip package is not
        installed."""
        super().save_pretrained(save_directory, **kwargs)
        save_directory = Path(save_directory)
        index = self.model_index()
        (save_directory / "model_index.json").write_text(
            json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        for source in self._code_files():
            if source.resolve() != (save_directory / source.name).resolve():
                shutil.copyfile(source, save_directory / source.name)

    def _code_files(self) -> list[Path]:
        """The file of this pipeline class and of each Harmon pipeline it derives from: a subclass's file (e.g.
        `pipeline_harmon_inpaint.py`) imports its base's file, which diffusers then fetches from the same folder."""
        classes = [klass for klass in type(self).__mro__ if issubclass(klass, HarmonPipeline)]
        return list(dict.fromkeys(Path(sys.modules[klass.__module__].__file__) for klass in classes))

    # -------------------------------------------------------------------------------------------- properties
    @property
    def vae(self):
        """The model's own KL VAE (not a separate component, so its weights are stored once)."""
        return self.model.model.vae

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per image token along each side (VAE stride x MAR patch size)."""
        return self.model.config.vae_stride * self.model.config.patch_size

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------------------------------------ phases
    def encode_prompt(
        self, prompt: str | list[str] | None, device: torch.device | None = None
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Chat-format `Generate an image: {prompt}` (or the unconditional prompt for `None`) and tokenise it.

        Returns right-padded `input_ids` and `attention_mask`, both (num_prompts, length).
        """
        prompts = [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
        input_ids, attention_mask = self.model.tokenize_generation_prompts(prompts, tokenizer=self.tokenizer)
        device = device or self._execution_device
        return input_ids.to(device), attention_mask.to(device)

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        num_images_per_prompt,
        generator,
        output_type,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
        **settings,
    ) -> dict:
        """Validate every argument; returns the resolved [`HarmonImageGenerationSettings`] (defaults filled in; a
        bad one raises `HarmonSettingError`, a `ValueError` naming the argument as it was passed here)."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(item, str) for item in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}.")
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, list) or not all(isinstance(item, str) for item in negatives):
                raise ValueError(
                    f"negative_prompt must be None, a string or a list of strings, got {negative_prompt!r}."
                )
            if len(negatives) not in (1, len(prompts)):
                raise ValueError(
                    f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; give one, or one "
                    "per prompt."
                )
        count = num_images_per_prompt
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}.")
        if isinstance(generator, list):
            expected = len(prompts) * num_images_per_prompt
            if len(generator) != expected or not all(isinstance(item, torch.Generator) for item in generator):
                raise ValueError(
                    f"generator is a list of {len(generator)}, but a list must hold one torch.Generator per image "
                    f"({len(prompts)} prompts x {num_images_per_prompt} images = {expected})."
                )
        elif generator is not None and not isinstance(generator, torch.Generator):
            kind = type(generator).__name__
            raise ValueError(f"generator must be a torch.Generator or a list of them (one per image), got {kind}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}.")
        unknown = [
            name for name in callback_on_step_end_tensor_inputs or [] if name not in self._callback_tensor_inputs
        ]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}, got unknown {unknown}."
            )
        return self.model.image_generation_settings(**settings)

    def _generation_arguments(self, settings, sampling: str | None, num_inference_steps: int | None) -> dict:
        """`generate_images` arguments: the resolved settings, plus the image-conditioned inputs of a subclass's call,
        whose MAR iterations the model scales by the share of tokens drawn unless the caller gave them."""
        arguments = settings.to_dict()
        arguments["prompt_mode"] = "direct"  # restated before the prompts were encoded (`__call__`), not again
        if self._context.get("context_images") is None:
            arguments.pop("edit_mode")  # how an instruction about pictures is followed: text-to-image has none
        elif arguments["edit_mode"] == "describe" and self._context.get("image_guidance_scale") is None:
            arguments["image_guidance_scale"] = None  # a stored scale guides direct edits; "describe" draws text
        if self._canvas:
            arguments.update({name: value for name, value in self._canvas.items() if name != "strength"})
            if num_inference_steps is None:
                arguments.update(num_iter=None, sampling=sampling)
        return arguments

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        cfg_schedule: str | None = None,
        temperature: float | None = None,
        num_sampling_steps: int | None = None,
        x0_clamp: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sampling: str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        preset: str | None = None,
        prompt_mode: str | None = None,
        candidates: int | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images from text.

        Every sampling argument left `None` takes the model's `generation_config.image_generation` value, as
        `model.generate_images` and the transformers pipeline do; the defaults named below are the released models'
        (the reference sampler's). A checkpoint trained with other settings (the embedded Shapes model: 16
        iterations, guidance 1.25, temperature 0.05, x0 clamp 7) stores them there.

        Args:
            prompt (`str` or `list[str]`): what to draw (formatted as `Generate an image: {prompt}`).
            negative_prompt (`str` or `list[str]`, *optional*): replaces the unconditional prompt of classifier-free
                guidance by `Generate an image: {negative_prompt}`; one, or one per prompt.
            height (`int`, *optional*), width (`int`, *optional*): image size in pixels, multiples of the VAE stride
                (default: the model's `image_size`).
            num_inference_steps (`int`, *optional*, 64 for the released models): MAR iterations (1 .. number of
                image tokens); each reveals a share of the tokens on a cosine schedule.
            guidance_scale (`float`, *optional*, 3.0 for the released models): classifier-free guidance scale; 1
                disables guidance.
            cfg_schedule (`str`, *optional*, `"constant"` for the released models): `"constant"`, or `"linear"` to
                ramp the scale from 1 as tokens get revealed.
            temperature (`float`, *optional*, 1.0 for the released models): scales the diffusion head's sampling
                noise.
            num_sampling_steps (`int`, *optional*): diffusion-head steps per token (default: the model's
                `num_sampling_steps`, 100 for the released models).
            x0_clamp (`float`, *optional*): clamps the head's predicted clean latent to [-x0_clamp, x0_clamp] at every
                diffusion step (None for the released models: the reference sampler does not clamp).
            num_images_per_prompt (`int`, defaults to 1): images per prompt.
            sampling (`str`, *optional*): a named sampling preset of the checkpoint
                (`generation_config.image_generation_presets`, e.g. `"fast"`); the arguments given here override it.
                `preset=` is its older name (deprecated).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one generator, or one per image
                (prompt-major: image `i * num_images_per_prompt + k`); with a list, each image depends only on its
                own generator, so it is the same alone or in any batch.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (float in [0, 1], NHWC), `"pt"` (float in
                [0, 1], NCHW) or `"latent"` (scaled VAE latents, NCHW; no decode).
            return_dict (`bool`, defaults to `True`): return an [`~pipelines.ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, *optional*): called after every MAR iteration as
                `callback_on_step_end(pipeline, step, timestep, callback_kwargs)`, where `timestep` is the number of
                tokens still masked and `callback_kwargs` holds the tensors named in
                `callback_on_step_end_tensor_inputs` (`"latents"`: current latents (B, C, h, w), masked positions
                zero; `"mask"`: (B, h*w) bool, True = still masked). Returning `{"latents": tensor}` replaces the
                latents; setting `pipeline._interrupt = True` stops after this iteration.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): see above.
            prompt_mode (`str`, *optional*): `"direct"` draws the prompt as given; `"describe"` has the model first
                restate it in the words its drawing was trained on (`model.describe_prompts`), then draws that;
                `"auto"` restates only a prompt with words the drawing never learned. Default: the checkpoint's (the
                embedded Shapes model: `"auto"`), else `"direct"`.
            candidates (`int`, *optional*): drawings made of each image; the model keeps the one its own reading
                (`model.reading_log_likelihoods`: the text drawn, as its answer to `config.reading_prompt`) finds
                most likely (best of N; needs a checkpoint with a reading prompt). Default: the checkpoint's (1
                unless it stores another; an edit drawn with its pictures in view draws once).

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] with `images` (a list of PIL images, or an array/tensor), or a tuple
            `(images,)` when `return_dict` is False.
        """
        if preset is not None:  # the older name: the model warns and checks it against `sampling`
            sampling = self.model.sampling_name(sampling, preset)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        settings = self.check_inputs(
            prompt,
            negative_prompt,
            num_images_per_prompt,
            generator,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            sampling=sampling,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            cfg_schedule=cfg_schedule,
            temperature=temperature,
            num_sampling_steps=num_sampling_steps,
            x0_clamp=x0_clamp,
            strength=self._canvas.get("strength"),
            image_guidance_scale=self._context.get("image_guidance_scale"),
            edit_mode=self._context.get("edit_mode"),
            prompt_mode=prompt_mode,
            candidates=candidates,
        )
        self._guidance_scale = settings.guidance_scale
        self._num_timesteps = settings.num_iter
        self._interrupt = False
        device = self._execution_device

        described = None
        # 1. Prompts -> token ids (conditional and, for guidance, negative / unconditional). With context images (a
        # subclass's call) the model tokenises the text itself, since the processor puts the images before it.
        if self._context.get("context_images") is not None:
            single = isinstance(negative_prompt, list) and len(negative_prompt) == 1
            prompt_inputs = {
                "prompt": prompt,
                "negative_prompt": negative_prompt[0] if single else negative_prompt,
                "context_images": self._context["context_images"],
                "tokenizer": self.tokenizer,
            }
        else:
            if settings.prompt_mode != "direct":  # the model restates the prompts (all, or "auto"'s); those are drawn
                described = self.model._restatement(prompt, settings.prompt_mode, tokenizer=self.tokenizer)
                prompt = prompt if described is None else described
            input_ids, attention_mask = self.encode_prompt(prompt, device)
            negative_ids = negative_mask = None
            if settings.guidance_scale != 1.0:
                negatives = negative_prompt
                if negatives is None or isinstance(negatives, str) or len(negatives) == 1:
                    single = negatives if negatives is None or isinstance(negatives, str) else negatives[0]
                    negatives = [single] * input_ids.shape[0]
                negative_ids, negative_mask = self.encode_prompt(negatives, device)
            prompt_inputs = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "negative_input_ids": negative_ids,
                "negative_attention_mask": negative_mask,
            }

        # 2. Masked-autoregressive loop, one progress-bar tick and one callback per MAR iteration.
        grid = (settings.height // self.vae_scale_factor, settings.width // self.vae_scale_factor)
        inner = self.model.model

        # Drawings of each image (`candidates`): an edit drawn with its pictures in view is drawn once.
        direct_edit = self._context.get("context_images") is not None and settings.edit_mode == "direct"
        drawings = 1 if direct_edit and candidates is None else settings.candidates
        with contextlib.ExitStack() as stack:
            bars = []

            def on_iteration(step, num_iter, tokens, mask):
                if not bars:  # opened at the first iteration: a request refused before drawing shows no bar
                    bars.append(stack.enter_context(self.progress_bar(total=num_iter * drawings)))
                    self._num_timesteps = num_iter  # an image-conditioned call draws fewer iterations
                elif step == 0 and bars[0].n >= bars[0].total:  # more drawings than expected
                    bars[0].total += num_iter
                bars[0].update()
                if callback_on_step_end is None:
                    return None
                latents = inner.tokens_to_latents(tokens.reshape(tokens.shape[0], *grid, -1))
                available = {"latents": latents, "mask": mask}
                callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(self, step, int(mask[0].sum()), callback_kwargs) or {}
                result = {"interrupt": self.interrupt}
                if outputs.get("latents") is not None:
                    result["tokens"] = inner.latents_to_tokens(outputs["latents"]).reshape(tokens.shape)
                return result

            arguments = self._generation_arguments(settings, sampling, num_inference_steps)
            if (
                candidates is None
            ):  # the model's own count (stored, or the preset's), which it drops where it cannot rank
                arguments.update(candidates=None, sampling=sampling)
            if "input_ids" in prompt_inputs:  # the text the encoded prompts say, which candidates are ranked by
                prompt_inputs["ranking_prompt"] = prompt
            generated = self.model.generate_images(
                **prompt_inputs,
                **arguments,
                num_images_per_prompt=num_images_per_prompt,
                generator=generator,
                callback=on_iteration,
                decode=output_type != "latent",
            )
        # edit_mode / prompt_mode "describe": what was drawn
        self._descriptions = generated.descriptions if described is None else described

        # 3. Decode (done by the model's VAE above) and convert.
        if output_type == "latent":
            images = generated.latents
        else:
            images = self.image_processor.postprocess(generated.images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return HarmonPipelineOutput(images=images, descriptions=self._descriptions)


class HarmonText2ImagePipeline(HarmonPipeline):
    """Deprecated name of [`HarmonPipeline`], kept so that code and exported folders that name it keep working."""

    def __init__(self, *args, **kwargs):
        import warnings

        warnings.warn(
            "HarmonText2ImagePipeline is deprecated and will be removed; use HarmonPipeline (the same class).",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
