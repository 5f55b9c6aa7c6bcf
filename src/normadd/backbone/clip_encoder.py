"""The CLIP encoder every CLIP consumer in a batch shares.

Built on open_clip's own model code: the image tower runs once through
``VisionTransformer.forward_intermediates`` and the raw residual-stream tokens right after the
tapped blocks come back in a small typed :class:`ClipFeatures`. Text is encoded padded only to
the longest prompt of each batch, which the causal mask makes exact (tested against
``encode_text``) and several times faster than padding to 77 tokens.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F  # noqa: N812
from open_clip.model import resize_pos_embed
from torch import Tensor

from normadd.backbone.specs import BackboneSpec, get_backbone_spec, register_open_clip_configs
from normadd.backbone.weights import ResolvedWeights, resolve_weights
from normadd.errors import WeightsMismatchError
from normadd.runtime import Runtime, resolve_runtime

TEXT_BATCH = 128


@dataclass
class ClipFeatures:
    """What one pass of the image tower gives every consumer.

    Attributes:
        patch_tokens: One tensor (B, N, width) per tapped layer: the residual stream right after
            that block, class token removed, no ``ln_post``/``proj``.
        class_tokens: One tensor (B, width) per tapped layer: the class token at that block.
        image_embedding: (B, embed_dim) pooled image embedding (``ln_post`` + ``proj``), not
            normalised.
        grid_size: (rows, cols) of the patch grid.
        layers: The tapped blocks, 1-based, in the order of ``patch_tokens``.
    """

    patch_tokens: list[Tensor]
    class_tokens: list[Tensor]
    image_embedding: Tensor
    grid_size: tuple[int, int]
    layers: tuple[int, ...]
    derived: dict[int, list[Tensor]] = field(default_factory=dict, repr=False)

    def projected_by(self, projections: torch.nn.Module) -> list[Tensor]:
        """Patch tokens through ``projections``, computed once per projections module and batch.

        The detector and the normality detector usually share their projections: the second
        consumer reads the first one's result instead of projecting again.
        """
        key = id(projections)
        if key not in self.derived:
            self.derived[key] = [t.float() for t in projections(self.patch_tokens)]
        return self.derived[key]

    @property
    def batch_size(self) -> int:
        """Number of images in the batch."""
        return int(self.image_embedding.shape[0])

    def rows(self, start: int, stop: int) -> ClipFeatures:
        """The features of images ``start:stop`` of the batch (views, no copy; nothing derived yet).

        Several lines on one encoder share one image pass: each reads its own images' rows.
        """
        return ClipFeatures(
            patch_tokens=[t[start:stop] for t in self.patch_tokens],
            class_tokens=[t[start:stop] for t in self.class_tokens],
            image_embedding=self.image_embedding[start:stop],
            grid_size=self.grid_size,
            layers=self.layers,
        )


def _is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (OpenAI's own CLIP ``.pt`` files are TorchScript)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _create_model(spec: BackboneSpec, weights: Path | None) -> open_clip.CLIP:
    """Build the open_clip model at the run size; load and check ``weights`` when given.

    open_clip interpolates the position embeddings to the run size while loading. TorchScript
    archives are read with ``torch.jit.load`` (open_clip's loader refuses them under
    ``weights_only``) and go through the same open_clip conversion.

    Raises:
        WeightsMismatchError: The file cannot be read or does not fit the backbone.
    """
    try:
        if weights is None or not _is_torchscript(weights):
            return open_clip.create_model(
                spec.open_clip_name,
                pretrained=str(weights) if weights else None,
                force_image_size=spec.image_size,
                force_quick_gelu=spec.quick_gelu,
                device="cpu",
            )
        model = open_clip.create_model(
            spec.open_clip_name, force_image_size=spec.image_size, force_quick_gelu=spec.quick_gelu, device="cpu"
        )
        state_dict = torch.jit.load(str(weights), map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
            state_dict.pop(key, None)
        resize_pos_embed(state_dict, model)
        model.load_state_dict(state_dict, strict=True)
        return model
    except RuntimeError as error:  # open_clip's strict load: missing, unexpected or mis-shaped keys
        detail = (str(error).strip().splitlines() or [""])[0][:160]
        raise WeightsMismatchError(
            f"weights {weights} do not fit backbone '{spec.name}' ({detail}): pass the {spec.open_clip_name} checkpoint"
        ) from None
    except Exception as error:
        detail = (str(error).strip().splitlines() or [""])[0][:160]
        raise WeightsMismatchError(
            f"weights {weights} cannot be read ({type(error).__name__}: {detail}): pass an open_clip "
            f"checkpoint (.pt/.bin/.safetensors) of {spec.open_clip_name}"
        ) from None


class ClipEncoder:
    """A CLIP model from open_clip with a fixed run size and tapped layers.

    Build it with :meth:`from_name`; call :meth:`encode_images` on normalised pixels (or
    :meth:`preprocess` first) and :meth:`encode_texts` on strings.
    """

    def __init__(
        self,
        model: open_clip.CLIP,
        spec: BackboneSpec,
        weights: ResolvedWeights,
        runtime: Runtime,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        self.weights = weights
        self.runtime = runtime
        self.tokenizer = open_clip.get_tokenizer(spec.open_clip_name)
        depth = len(self.model.visual.transformer.resblocks)
        bad = [layer for layer in spec.layers if not 1 <= layer <= depth]
        if bad:
            raise WeightsMismatchError(
                f"layers {bad} do not exist in '{spec.name}' ({depth} blocks): pick layers 1..{depth}"
            )
        self._mean = torch.tensor(spec.mean, device=runtime.device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=runtime.device).view(1, 3, 1, 1)

    @classmethod
    def from_name(
        cls,
        name: str,
        weights: str | Path | None = None,
        layers: tuple[int, ...] | None = None,
        runtime: Runtime | None = None,
        image_size: int | None = None,
        weights_option: str = "--weights",
    ) -> ClipEncoder:
        """Build the encoder for a backbone, resolving its weights.

        Args:
            name: A backbone name (``ViT-L-14-336``, ``tiny-random``), an open_clip ``MODEL:TAG``,
                or an open_clip model config JSON file (see :func:`get_backbone_spec`).
            weights: Optional open_clip checkpoint, or ``random``; see :func:`resolve_weights`.
            layers: Tapped blocks (1-based); the backbone's default when None.
            runtime: Device and precision; CPU fp32 when None.
            image_size: Side of the square the model runs at; the backbone's default when None.
            weights_option: The flag that sets ``weights``, named in error hints.
        """
        spec = get_backbone_spec(name, layers, image_size)
        runtime = runtime or resolve_runtime("cpu", "fp32")
        resolved = resolve_weights(spec, weights, weights_option)
        register_open_clip_configs()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = _create_model(spec, resolved.path)
        return cls(model.to(runtime.device), spec, resolved, runtime)

    @property
    def image_size(self) -> int:
        """Side of the square input the image tower runs at."""
        return self.spec.image_size

    @property
    def width(self) -> int:
        """Width of the image tower's residual stream (dimension of raw patch tokens)."""
        return int(self.model.visual.conv1.out_channels)

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text embedding space."""
        return int(self.model.visual.output_dim)

    @property
    def is_random(self) -> bool:
        """True when the weights are a random initialisation (outputs mean nothing)."""
        return self.weights.path is None

    @property
    def identity(self) -> str:
        """A key naming backbone and weights, for caches."""
        return f"{self.spec.name}|{self.weights.fingerprint}"

    @property
    def description(self) -> str:
        """One line for users and output files naming the backbone and its weights."""
        if self.is_random:
            return f"{self.spec.name} (RANDOM weights, seed {self.spec.seed}: maps are not meaningful)"
        return f"{self.spec.name} ({self.weights.path}, {self.weights.origin})"

    def preprocess(self, images: Tensor) -> Tensor:
        """Normalise a batch of RGB images in [0, 1] (B, 3, H, W) for the image tower.

        Images of another size are resized (bicubic, antialiased, squashing the aspect ratio);
        :func:`normadd.images.load_image` already returns the run size, resized with PIL as the
        reference preprocessing does.
        """
        images = images.to(self.runtime.device, torch.float32)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bicubic", antialias=True
            ).clamp(0, 1)
        return (images - self._mean) / self._std

    @torch.inference_mode()
    def encode_images(self, pixels: Tensor) -> ClipFeatures:
        """Run the image tower once and return the tapped tokens.

        Args:
            pixels: Normalised images (B, 3, S, S) at the run size (see :meth:`preprocess`).
        """
        indices = [layer - 1 for layer in self.spec.layers]
        with self.runtime.autocast():
            out = self.model.visual.forward_intermediates(
                pixels.to(self.runtime.device),
                indices=indices,
                output_fmt="NLC",
                output_extra_tokens=True,
            )
        grid = self.model.visual.grid_size
        return ClipFeatures(
            patch_tokens=[t.float() for t in out["image_intermediates"]],
            class_tokens=[t[:, 0].float() for t in out["image_intermediates_prefix"]],
            image_embedding=out["image_features"].float(),
            grid_size=(int(grid[0]), int(grid[1])),
            layers=self.spec.layers,
        )

    def tokenize(self, texts: list[str]) -> Tensor:
        """Tokenise with the backbone's own tokenizer (padded to its context length)."""
        return self.tokenizer(texts)

    @torch.inference_mode()
    def encode_token_batch(self, tokens: Tensor) -> Tensor:
        """Encode tokenised text padded only to the longest prompt of the batch.

        CLIP's text tower is causal and pools at the end-of-text token, so the padding after
        the longest prompt never reaches any pooled output: trimming it changes nothing but
        the cost. Returns (N, embed_dim), not normalised.
        """
        model = self.model
        if not isinstance(model, open_clip.CLIP) or model.text_pool_type != "argmax":
            return model.encode_text(tokens.to(self.runtime.device)).float()
        tokens = tokens.to(self.runtime.device)
        length = int(tokens.argmax(dim=-1).max()) + 1  # end-of-text has the highest token id
        tokens = tokens[:, :length]
        cast_dtype = model.transformer.get_cast_dtype()
        with self.runtime.autocast():
            x = model.token_embedding(tokens).to(cast_dtype)
            x = x + model.positional_embedding[:length].to(cast_dtype)
            x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
            x = model.ln_final(x)
            x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
            x = x @ model.text_projection
        return x.float()

    def encode_texts(self, texts: list[str], batch_size: int = TEXT_BATCH) -> Tensor:
        """Encode many prompts: sorted by length, batched, each batch padded to its longest.

        Returns (len(texts), embed_dim) in the input order, not normalised.
        """
        tokens = self.tokenize(texts)
        lengths = tokens.argmax(dim=-1)
        order = torch.argsort(lengths, descending=True)
        encoded = torch.empty(len(texts), self.embed_dim)
        for start in range(0, len(texts), batch_size):
            chunk = order[start : start + batch_size]
            encoded[chunk] = self.encode_token_batch(tokens[chunk]).cpu()
        return encoded
