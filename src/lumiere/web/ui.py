"""The Gradio page on top of ``lumiere.web.app``: tabs per mode, settings, progress, result, gallery.

    demo = build_app(pipe)                    # gr.Blocks; handlers are Studio's (lumiere.web.app)
    launch(demo, host="127.0.0.1", port=7860)  # queue of concurrency 1, upload cap, offline
    serve(model=None, host="127.0.0.1", port=7860)  # load a pipeline directory, build, launch

The page works offline: analytics (and with them Gradio's version check) are off, fonts are
Gradio's bundled ones, nothing is shared (``share=False`` always).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before Gradio is imported: some of its modules read this at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402

from lumiere.web.app import MODES, Caps, Result, Studio, WebError, first_frame, remove_uploads  # noqa: E402

logger = logging.getLogger(__name__)

GENERATE_QUEUE = "generate"  # one concurrency group for every tab: one generation at a time
EXAMPLE_PROMPT = "a red circle moving right on a black background"
EXAMPLE_PROMPTS = [  # the shipped model's training grammar (lumiere.data.shapes)
    [EXAMPLE_PROMPT],
    ["a blue square moving up on a white background"],
    ["a green triangle bouncing on a gray background"],
    ["a yellow circle growing on a black background"],
]

CSS = """
#lumiere-header h1 { margin-bottom: 0.1em; }
#lumiere-header p { color: var(--body-text-color-subdued); margin-top: 0; }
/* Small models make small clips: scale them up without blurring. */
#result-video video, #gallery video, #gallery img { image-rendering: pixelated; }
#result-video video { min-height: 256px; background: #111; }
.unsupported { border-left: 4px solid var(--color-accent); padding: 0.4em 0.8em;
               background: var(--block-background-fill); }
#result-summary { min-height: 1.5em; }
footer { display: none !important; }
"""


def _theme() -> gr.themes.Base:
    return gr.themes.Default(primary_hue="orange", secondary_hue="slate", radius_size="md")


# ---------------------------------------------------------------------------------------------
# Handlers: Studio's, with Gradio's progress and error display
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _errors_on_page() -> Iterator[None]:
    """A refused request becomes a message on the page (``gr.Error``); the server goes on."""
    try:
        yield
    except WebError as err:
        raise gr.Error(str(err), title="Cannot generate", print_exception=False) from None
    except gr.Error:
        raise
    except Exception:  # a bug: logged whole for the operator; the page gets the project's words
        logger.exception("request failed")
        raise gr.Error(
            "Generation failed because of an error in the server; it is logged there. Other requests "
            "still work.",
            title="Error",
        ) from None


def upload_folder() -> Path:
    """Where Gradio keeps uploads (``GRADIO_TEMP_DIR``, else ``<tmp>/gradio``): the only folder
    whose files a request may delete."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def _reporter(progress: gr.Progress):
    def report(done: int, total: int) -> None:
        progress((done, total), desc="Denoising", unit="steps")

    return report


def _outputs(result: Result, studio: Studio) -> tuple[str, str, list[tuple[str, str]]]:
    return str(result.path), result.summary, studio.gallery.items()


def _handlers(studio: Studio) -> dict[str, Any]:
    """One function per mode, with the widget values as arguments (Gradio passes them in order).

    Gradio finds the progress bar by the type of a parameter's default: ``progress=gr.Progress()``
    is its idiom, hence the B008 exceptions. Each function names its widgets (Gradio matches them
    by position) and hands them to ``run``, which checks the settings and calls the Studio.
    """

    def run(
        handler, prompt, negative, numbers, uploads, progress, request
    ) -> tuple[str, str, list[tuple[str, str]]]:
        client = request.client.host if request is not None and request.client is not None else None
        try:
            with _errors_on_page(), studio.admit(client):
                settings = studio.settings(*numbers)  # frames, steps, guidance, seed, height, width
                result = handler(prompt, negative, *uploads, settings, _reporter(progress))
        finally:  # the request is over: its uploads go now, not hours later with the cache
            remove_uploads(uploads, upload_folder())
        return _outputs(result, studio)

    def text(prompt, negative, frames, steps, guidance, seed, height, width, request: gr.Request | None = None,
             progress=gr.Progress()):  # noqa: B008  # fmt: skip
        numbers = (frames, steps, guidance, seed, height, width)
        return run(studio.text_to_video, prompt, negative, numbers, (), progress, request)

    def image(prompt, negative, frames, steps, guidance, seed, height, width, picture, request: gr.Request | None = None,
              progress=gr.Progress()):  # noqa: B008  # fmt: skip
        numbers = (frames, steps, guidance, seed, height, width)
        return run(studio.image_to_video, prompt, negative, numbers, (picture,), progress, request)

    def cinemagraph(prompt, negative, frames, steps, guidance, seed, height, width, editor, request: gr.Request | None = None,
                    progress=gr.Progress()):  # noqa: B008  # fmt: skip
        numbers = (frames, steps, guidance, seed, height, width)
        return run(studio.cinemagraph, prompt, negative, numbers, (editor,), progress, request)

    def inpaint(prompt, negative, frames, steps, guidance, seed, height, width, video, editor,
                request: gr.Request | None = None, progress=gr.Progress()):  # noqa: B008  # fmt: skip
        numbers = (frames, steps, guidance, seed, height, width)
        return run(studio.inpaint, prompt, negative, numbers, (video, editor), progress, request)

    def video(prompt, negative, frames, steps, guidance, seed, height, width, clip, strength,
              request: gr.Request | None = None, progress=gr.Progress()):  # noqa: B008  # fmt: skip
        numbers = (frames, steps, guidance, seed, height, width)
        return run(studio.video_to_video, prompt, negative, numbers, (clip, strength), progress, request)

    return {"text": text, "image": image, "cinemagraph": cinemagraph, "inpaint": inpaint, "video": video}


def _mask_editor(label: str, sources: list[str], elem_id: str) -> gr.ImageEditor:
    """An image editor to paint a region on (cinemagraph, inpainting): Studio reads the painted
    layer's alpha as the mask."""
    return gr.ImageEditor(
        label=label,
        type="filepath",
        sources=sources,
        brush=gr.Brush(colors=[("#ff6a00", 0.6)], color_mode="fixed"),
        layers=False,
        transforms=(),
        format="png",  # strokes saved losslessly: their alpha is the mask
        height=300,
        elem_id=elem_id,
    )


def _show_first_frame(studio: Studio):
    """Inpainting: put the uploaded video's first frame in the editor to paint the region on."""

    def show(video: str | None) -> dict | None:
        try:
            frame = first_frame(video, studio.caps)
        except WebError as err:
            gr.Warning(str(err))
            return None
        if frame is None:
            return None
        return {"background": frame, "layers": [], "composite": frame}

    return show


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def _describe(studio: Studio) -> str:
    pipe = studio.pipe
    name = getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None) or "in memory"
    ssr = f", upsampled ×{studio.ssr_scale} by the SSR model" if studio.ssr_scale > 1 else ""
    conditional = studio.support["image"] is None
    return (
        f"Model: `{name}` · {studio.default_width}×{studio.default_height} base{ssr} · "
        f"frames in multiples of {studio.frame_step} · "
        + ("conditional (image, mask)" if conditional else "text-to-video only")
    )


def _unsupported(reason: str | None) -> None:
    if reason is not None:
        gr.Markdown(f"**Not available.** {reason}", elem_classes="unsupported")


def _generate_button(mode: str, support: dict[str, str | None]) -> gr.Button:
    return gr.Button(
        "Generate",
        variant="primary",
        size="lg",
        interactive=support[mode] is None,
        elem_id=f"generate-{mode}",
    )


def build_app(pipe: Any, caps: Caps | None = None, output_dir: str | Path | None = None) -> gr.Blocks:
    """The page for a ``LumierePipeline`` (or a ready ``Studio``): launch it with ``launch``."""
    studio = pipe if isinstance(pipe, Studio) else Studio(pipe, caps, output_dir)
    caps = studio.caps
    handlers = _handlers(studio)
    support = studio.support

    # Uploads of finished requests are removed at once (_handlers); the cache sweep every 5 min
    # removes what no request used (an image uploaded, then the tab closed) after 15 min.
    with gr.Blocks(title="Lumiere", analytics_enabled=False, delete_cache=(300, 900)) as demo:
        gr.Markdown(
            "# Lumiere\nSpace-time diffusion for video generation (Bar-Tal et al. 2024). "
            + _describe(studio),
            elem_id="lumiere-header",
        )
        with gr.Row(equal_height=False):
            # ----- left: what to make ---------------------------------------------------------
            with gr.Column(scale=5):
                prompt = gr.Textbox(
                    label="Prompt",
                    placeholder=EXAMPLE_PROMPT,
                    lines=2,
                    max_length=caps.max_prompt_chars,
                    elem_id="prompt",
                )
                gr.Examples(EXAMPLE_PROMPTS, inputs=prompt, label="Try")
                negative = gr.Textbox(
                    label="Negative prompt",
                    placeholder="what to steer away from (optional)",
                    max_length=caps.max_prompt_chars,
                    elem_id="negative-prompt",
                )
                buttons: dict[str, gr.Button] = {}
                inputs: dict[str, list[gr.components.Component]] = {}
                with gr.Tabs(elem_id="modes"):
                    with gr.Tab(MODES["text"], id="text"):
                        _unsupported(support["text"])
                        gr.Markdown("A clip from the prompt alone; the whole clip is made in one pass.")
                        inputs["text"] = []
                        buttons["text"] = _generate_button("text", support)
                    with gr.Tab(MODES["image"], id="image"):
                        _unsupported(support["image"])
                        picture = gr.Image(
                            label="First frame",
                            type="filepath",
                            image_mode=None,  # the file as uploaded: Studio checks and converts it
                            sources=["upload", "clipboard"],
                            height=260,
                            elem_id="image-input",
                        )
                        gr.Markdown(
                            "The image is centre-cropped to the video's shape; the prompt says what happens next."
                        )
                        inputs["image"] = [picture]
                        buttons["image"] = _generate_button("image", support)
                    with gr.Tab(MODES["cinemagraph"], id="cinemagraph"):
                        _unsupported(support["cinemagraph"])
                        still = _mask_editor(
                            "Image: paint the region to animate", ["upload", "clipboard"], "cinemagraph-input"
                        )
                        gr.Markdown("Only the painted region moves; the rest stays as in the image.")
                        inputs["cinemagraph"] = [still]
                        buttons["cinemagraph"] = _generate_button("cinemagraph", support)
                    with gr.Tab(MODES["inpaint"], id="inpaint"):
                        _unsupported(support["inpaint"])
                        source = gr.Video(
                            label="Video", sources=["upload"], height=220, elem_id="inpaint-video"
                        )
                        hole = _mask_editor(
                            "First frame: paint the region to fill (the same region in every frame)",
                            ["upload"],
                            "inpaint-mask",
                        )
                        gr.Markdown(
                            "Upload a video, then paint on its first frame the region to fill; the rest "
                            "of every frame is kept."
                        )
                        source.change(_show_first_frame(studio), inputs=source, outputs=hole, queue=False)
                        inputs["inpaint"] = [source, hole]
                        buttons["inpaint"] = _generate_button("inpaint", support)
                    with gr.Tab(MODES["video"], id="video"):
                        _unsupported(support["video"])
                        clip = gr.Video(label="Video", sources=["upload"], height=220, elem_id="v2v-video")
                        strength = gr.Slider(
                            0.05, 1.0, value=0.6, step=0.05, label="Strength",
                            info="how much to change: 1 ignores the video, small values keep it close",
                        )  # fmt: skip
                        gr.Markdown(
                            "The video is noised to the level Strength and denoised with the prompt "
                            "(SDEdit); any model can do this."
                        )
                        inputs["video"] = [clip, strength]
                        buttons["video"] = _generate_button("video", support)
                with gr.Accordion("Settings", open=True):
                    with gr.Row():
                        frames = gr.Slider(
                            studio.frame_step, studio.max_frames, value=studio.default_frames,
                            step=studio.frame_step, label="Frames", elem_id="frames",
                        )  # fmt: skip
                        steps = gr.Slider(
                            1, caps.max_steps, value=studio.default_steps, step=1,
                            label="Steps", info="denoising steps", elem_id="steps",
                        )  # fmt: skip
                    with gr.Row():
                        guidance = gr.Slider(
                            0, caps.max_guidance, value=5.0, step=0.5, label="Guidance",
                            info="≤ 1: none; ~5 follows the prompt closely", elem_id="guidance",
                        )  # fmt: skip
                        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                    with gr.Row():
                        height, width = (
                            gr.Slider(studio.size_step, studio.max_size, value=value, step=studio.size_step,
                                      label=f"{name} (base)", elem_id=name.lower())
                            for name, value in (("Height", studio.default_height), ("Width", studio.default_width))
                        )  # fmt: skip

            # ----- right: what was made -------------------------------------------------------
            with gr.Column(scale=4):
                result = gr.Video(
                    label="Result",
                    interactive=False,
                    autoplay=True,
                    loop=True,
                    height=320,
                    buttons=["download"],
                    elem_id="result-video",
                )
                summary = gr.Markdown(elem_id="result-summary")
                gallery = gr.Gallery(
                    label="Recent results",
                    columns=4,
                    height=260,
                    fit_columns=False,
                    object_fit="contain",
                    allow_preview=True,
                    elem_id="gallery",
                )

        settings = [prompt, negative, frames, steps, guidance, seed, height, width]
        for mode, button in buttons.items():
            button.click(
                handlers[mode],
                inputs=settings + inputs[mode],
                outputs=[result, summary, gallery],
                show_progress_on=result,
                # Requests enter Studio.admit together (its per-client and total limits), then
                # generate one at a time behind Studio's lock.
                concurrency_limit=caps.queue_size,
                concurrency_id=GENERATE_QUEUE,
                api_name=f"generate_{mode}",
            )
        demo.load(studio.gallery.items, outputs=gallery, queue=False)
    demo.studio = studio  # launch() reads the caps from it
    return demo


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Serve a page from ``build_app`` on ``host:port``; returns its local URL.

    One generation at a time (Studio's lock; at most ``caps.queue_size`` requests in line, and
    ``caps.max_queued_per_client`` of one address),
    uploads capped at ``caps.max_upload_bytes``, never shared through a public link.
    ``block=False`` returns at once with the server running in a thread (``demo.close()`` stops it).
    """
    studio: Studio = demo.studio
    caps = studio.caps
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: anyone who can reach this address can use the page", host)
    demo.queue(default_concurrency_limit=caps.queue_size, max_size=caps.queue_size)
    _, local_url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=True,
        max_file_size=caps.max_upload_bytes,
        allowed_paths=[str(studio.output_dir)],
        prevent_thread_lock=not block,
        ssr_mode=False,  # no Node server: the page is plain static files
        pwa=False,
        mcp_server=False,
        theme=_theme(),
        css=CSS,
        quiet=True,  # no "set share=True" hint: the URL is logged below
    )
    return local_url


def serve(
    model: str
    | Path
    | None = None,  # directory written by LumierePipeline.save_pretrained; None: shipped model
    host: str = "127.0.0.1",  # loopback only unless told otherwise
    port: int = 7860,
    caps: Caps | None = None,
    device: str | None = None,  # default: cuda if available, else cpu
    output_dir: str | Path | None = None,  # where results are written; default: a temporary directory
    block: bool = True,  # False: return with the server running in a thread
) -> gr.Blocks:
    """Load a pipeline and serve its page (``lumiere serve``). Returns the running ``gr.Blocks``."""
    import torch

    from lumiere.pipelines import LumierePipeline

    pipe = LumierePipeline.from_pretrained(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu":  # loaded on the CPU
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)  # the page shows progress; keep the log readable
    demo = build_app(pipe, caps, output_dir)
    url = launch(demo, host, port, block=False)
    logger.info("serving %s on %s (Ctrl+C stops)", model or "the shipped model", url)
    if block:
        try:
            demo.block_thread()
        finally:
            if output_dir is None:  # our temporary directory: results live on only in downloads
                shutil.rmtree(demo.studio.output_dir, ignore_errors=True)
    return demo
