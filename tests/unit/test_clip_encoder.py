"""The CLIP encoder reads what open_clip's own forward computes and finds weights as documented."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from normadd.backbone import BACKBONES, ClipEncoder, get_backbone_spec, resolve_weights
from normadd.backbone.specs import register_open_clip_configs
from normadd.backbone.weights import WEIGHTS_ENV
from normadd.errors import (
    NormaddError,
    UnknownBackboneError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from normadd.prompts import expand_templates

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN_TOLERANCE = 1e-5
TEXT_TOLERANCE = 1e-4


def random_pixels(seed: int, batch: int = 2, size: int = 80) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hooked_block_outputs(encoder: ClipEncoder, pixels: Tensor) -> dict[int, Tensor]:
    """Residual stream right after each tapped block (1-based), from open_clip's encode_image."""
    transformer = encoder.model.visual.transformer
    captured: dict[int, Tensor] = {}
    handles = []
    for layer in encoder.spec.layers:

        def hook(_module: torch.nn.Module, _inputs: object, output: Tensor, layer: int = layer) -> None:
            captured[layer] = output.detach().clone()

        handles.append(transformer.resblocks[layer - 1].register_forward_hook(hook))
    try:
        with torch.no_grad():
            encoder.model.encode_image(pixels)
    finally:
        for handle in handles:
            handle.remove()
    if not getattr(transformer, "batch_first", True):  # (1 + N, B, width) -> (B, 1 + N, width)
        captured = {layer: t.permute(1, 0, 2) for layer, t in captured.items()}
    return captured


@pytest.fixture(scope="module")
def native_state_dict() -> dict[str, Tensor]:
    """A tiny-random model at its native size (56 px, 7 x 7 grid), seeded apart from normadd's."""
    register_open_clip_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        native = open_clip.create_model("normadd-tiny-random")
    return {k: v.detach().clone().contiguous() for k, v in native.state_dict().items()}


@pytest.fixture(scope="module")
def weights_files(native_state_dict: dict[str, Tensor], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    safetensors_path = folder / "tiny.safetensors"
    save_file(native_state_dict, str(safetensors_path))
    pt_path = folder / "tiny.pt"
    torch.save(native_state_dict, pt_path)
    return {"safetensors": safetensors_path, "pt": pt_path}


# --- (a) tapped image tokens == open_clip's forward ---------------------------


def test_patch_tokens_are_the_residual_stream_after_each_tapped_block(
    tiny_encoder: ClipEncoder, record_property: pytest.RecordProperty
) -> None:
    pixels = random_pixels(0)
    hooked = hooked_block_outputs(tiny_encoder, pixels)
    features = tiny_encoder.encode_images(pixels)
    assert features.layers == tiny_encoder.spec.layers == (1, 2, 3, 4)
    assert features.grid_size == (10, 10)
    worst = 0.0
    for index, layer in enumerate(features.layers):
        tokens = features.patch_tokens[index]
        assert tokens.shape == (2, 100, tiny_encoder.width)
        assert hooked[layer].shape == (2, 101, tiny_encoder.width)  # class token first
        worst = max(worst, float((tokens - hooked[layer][:, 1:]).abs().max()))
    print(f"patch tokens vs open_clip block hooks: max abs diff {worst:.3e}")
    record_property("patch_tokens_max_abs_diff", worst)
    assert worst < TOKEN_TOLERANCE


def test_class_tokens_are_the_first_token_after_each_tapped_block(
    tiny_encoder: ClipEncoder, record_property: pytest.RecordProperty
) -> None:
    pixels = random_pixels(1)
    hooked = hooked_block_outputs(tiny_encoder, pixels)
    features = tiny_encoder.encode_images(pixels)
    worst = max(
        float((features.class_tokens[i] - hooked[layer][:, 0]).abs().max()) for i, layer in enumerate(features.layers)
    )
    print(f"class tokens vs open_clip block hooks: max abs diff {worst:.3e}")
    record_property("class_tokens_max_abs_diff", worst)
    assert worst < TOKEN_TOLERANCE


def test_image_embedding_is_open_clips_encode_image(
    tiny_encoder: ClipEncoder, record_property: pytest.RecordProperty
) -> None:
    pixels = random_pixels(2)
    with torch.no_grad():
        expected = tiny_encoder.model.encode_image(pixels)
    features = tiny_encoder.encode_images(pixels)
    assert features.image_embedding.shape == (2, tiny_encoder.embed_dim)
    worst = float((features.image_embedding - expected).abs().max())
    print(f"image embedding vs encode_image: max abs diff {worst:.3e}")
    record_property("image_embedding_max_abs_diff", worst)
    assert worst < TOKEN_TOLERANCE


def test_patch_tokens_are_raw_not_through_ln_post(tiny_encoder: ClipEncoder) -> None:
    features = tiny_encoder.encode_images(random_pixels(3))
    last = features.patch_tokens[-1]
    with torch.no_grad():
        normed = tiny_encoder.model.visual.ln_post(last)
    assert (last - normed).abs().max() > 1e-2


def test_other_tapped_layers_read_other_blocks() -> None:
    encoder = ClipEncoder.from_name("tiny-random", layers=(2, 4))
    pixels = random_pixels(4)
    hooked = hooked_block_outputs(encoder, pixels)
    features = encoder.encode_images(pixels)
    assert features.layers == (2, 4) and len(features.patch_tokens) == 2
    for index, layer in enumerate((2, 4)):
        assert (features.patch_tokens[index] - hooked[layer][:, 1:]).abs().max() < TOKEN_TOLERANCE
    assert (features.patch_tokens[0] - features.patch_tokens[1]).abs().max() > 1e-3


@pytest.mark.parametrize("layers", [(4, 1), (2, 2)])
def test_tapped_layers_out_of_order_or_repeated_are_refused_or_honoured(
    layers: tuple[int, ...],
) -> None:
    try:
        encoder = ClipEncoder.from_name("tiny-random", layers=layers)
    except WeightsMismatchError:
        return  # refusing them is fine
    pixels = random_pixels(8)
    hooked = hooked_block_outputs(encoder, pixels)
    features = encoder.encode_images(pixels)
    assert len(features.patch_tokens) == len(layers)
    for index, layer in enumerate(features.layers):
        assert (features.patch_tokens[index] - hooked[layer][:, 1:]).abs().max() < TOKEN_TOLERANCE


def test_preprocess_normalises_with_openai_mean_and_std_at_the_run_size(
    tiny_encoder: ClipEncoder,
) -> None:
    grey = torch.full((1, 3, 80, 80), 0.5)
    pixels = tiny_encoder.preprocess(grey)
    mean = torch.tensor(tiny_encoder.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny_encoder.spec.std).view(1, 3, 1, 1)
    assert torch.allclose(pixels, (grey - mean) / std)
    assert tiny_encoder.preprocess(torch.rand(2, 3, 40, 120)).shape == (2, 3, 80, 80)


# --- (b) text padded to the longest prompt == encode_text padded to 77 --------


def mixed_prompts() -> list[str]:
    ensemble = expand_templates(["poked capsule", "capsule with a poke hole"])[::7]
    return [
        "a",
        "bottle",
        *ensemble,
        "a photo of a flawless bottle without flaw, without defect, without damage, in the scene.",
        "this is one capsule with a poke hole and a crack and a scratch and a stain in the scene.",
    ]


def test_text_padded_to_the_longest_prompt_equals_encode_text(
    tiny_encoder: ClipEncoder, record_property: pytest.RecordProperty
) -> None:
    texts = mixed_prompts()
    tokens = tiny_encoder.tokenize(texts)
    lengths = tokens.argmax(dim=-1)
    assert int(lengths.min()) < 5 and int(lengths.max()) > 20  # short and long prompts
    with torch.no_grad():
        expected = tiny_encoder.model.encode_text(tokens)
    trimmed = tiny_encoder.encode_token_batch(tokens)
    batched = tiny_encoder.encode_texts(texts, batch_size=3)  # sorted by length, batched, reordered
    worst = max(float((trimmed - expected).abs().max()), float((batched - expected).abs().max()))
    print(f"text padded to longest vs encode_text: max abs diff {worst:.3e}")
    record_property("text_max_abs_diff", worst)
    assert batched.shape == (len(texts), tiny_encoder.embed_dim)
    assert worst < TEXT_TOLERANCE


def test_encode_texts_keeps_the_input_order(tiny_encoder: ClipEncoder) -> None:
    texts = mixed_prompts()
    forward = tiny_encoder.encode_texts(texts, batch_size=4)
    backward = tiny_encoder.encode_texts(texts[::-1], batch_size=4)
    assert torch.allclose(forward, backward.flip(0), atol=1e-5)
    single = tiny_encoder.encode_texts([texts[3]])
    assert torch.allclose(single[0], forward[3], atol=TEXT_TOLERANCE)


# --- (c) the weights load path ------------------------------------------------


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_weights_from_a_file_are_loaded_at_the_run_size(
    kind: str,
    weights_files: dict[str, Path],
    native_state_dict: dict[str, Tensor],
    tiny_encoder: ClipEncoder,
) -> None:
    encoder = ClipEncoder.from_name("tiny-random", weights=weights_files[kind])
    assert encoder.weights.origin == "argument"
    assert encoder.weights.path == weights_files[kind]
    assert not encoder.is_random
    assert "RANDOM" not in encoder.description
    loaded = encoder.model.state_dict()
    assert torch.equal(loaded["visual.conv1.weight"], native_state_dict["visual.conv1.weight"])
    assert torch.equal(loaded["token_embedding.weight"], native_state_dict["token_embedding.weight"])
    # open_clip interpolated the position embedding from the 7 x 7 grid to the run size's 10 x 10
    assert native_state_dict["visual.positional_embedding"].shape == (1 + 7 * 7, 64)
    assert loaded["visual.positional_embedding"].shape == (1 + 10 * 10, 64)
    pixels = random_pixels(5)
    ours = encoder.encode_images(pixels)
    random_init = tiny_encoder.encode_images(pixels)
    assert ours.patch_tokens[0].shape == random_init.patch_tokens[0].shape
    assert (ours.patch_tokens[-1] - random_init.patch_tokens[-1]).abs().max() > 1e-2


def test_loaded_text_tower_is_the_checkpoints(
    weights_files: dict[str, Path], native_state_dict: dict[str, Tensor]
) -> None:
    register_open_clip_configs()
    native = open_clip.create_model("normadd-tiny-random")
    native.load_state_dict(native_state_dict)
    native.eval()
    encoder = ClipEncoder.from_name("tiny-random", weights=weights_files["pt"])
    texts = ["a photo of a bottle.", "broken capsule"]
    with torch.no_grad():
        expected = native.encode_text(open_clip.get_tokenizer("normadd-tiny-random")(texts))
    assert (encoder.encode_texts(texts) - expected).abs().max() < TEXT_TOLERANCE


def test_safetensors_and_pt_files_give_the_same_encoder(weights_files: dict[str, Path]) -> None:
    pixels = random_pixels(6)
    a = ClipEncoder.from_name("tiny-random", weights=weights_files["safetensors"]).encode_images(pixels)
    b = ClipEncoder.from_name("tiny-random", weights=weights_files["pt"]).encode_images(pixels)
    assert torch.equal(a.image_embedding, b.image_embedding)


def test_the_environment_variable_is_used_when_no_argument_is_given(
    weights_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_files["pt"]))
    encoder = ClipEncoder.from_name("tiny-random")
    assert encoder.weights.origin == "environment"
    assert encoder.weights.path == weights_files["pt"]
    assert not encoder.is_random


def test_the_argument_wins_over_the_environment(
    weights_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pt"))
    encoder = ClipEncoder.from_name("tiny-random", weights=weights_files["safetensors"])
    assert encoder.weights.origin == "argument"


def test_without_weights_the_test_backbone_is_random_and_says_so(tiny_encoder: ClipEncoder) -> None:
    assert tiny_encoder.weights.origin == "random"
    assert tiny_encoder.is_random
    assert "RANDOM" in tiny_encoder.description


def test_random_init_is_the_same_every_time(tiny_encoder: ClipEncoder) -> None:
    again = ClipEncoder.from_name("tiny-random")
    pixels = random_pixels(7)
    assert torch.equal(
        again.encode_images(pixels).image_embedding,
        tiny_encoder.encode_images(pixels).image_embedding,
    )
    assert again.identity == tiny_encoder.identity


def test_the_identity_tells_weights_apart(weights_files: dict[str, Path], tiny_encoder: ClipEncoder) -> None:
    loaded = ClipEncoder.from_name("tiny-random", weights=weights_files["pt"])
    assert loaded.identity != tiny_encoder.identity


def test_building_does_not_change_the_global_random_state() -> None:
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    ClipEncoder.from_name("tiny-random")
    assert torch.equal(torch.rand(3), expected)


# --- (d) errors ---------------------------------------------------------------


def test_a_missing_weights_file_raises_weights_not_found(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        ClipEncoder.from_name("tiny-random", weights=tmp_path / "nowhere.pt")


def test_a_missing_file_in_the_environment_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(WeightsNotFoundError, match=WEIGHTS_ENV):
        ClipEncoder.from_name("tiny-random")


def test_an_empty_weights_file_raises_weights_not_found(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.touch()
    with pytest.raises(WeightsNotFoundError, match="empty"):
        ClipEncoder.from_name("tiny-random", weights=path)


def test_a_weights_file_of_another_kind_raises_weights_not_found(tmp_path: Path) -> None:
    path = tmp_path / "weights.onnx"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsNotFoundError, match=r"\.safetensors"):
        ClipEncoder.from_name("tiny-random", weights=path)


def test_weights_of_another_architecture_raise_weights_mismatch(tmp_path: Path) -> None:
    register_open_clip_configs()
    other = open_clip.create_model("normadd-tiny-random-winclip")  # other widths and depth
    path = tmp_path / "winclip.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="do not fit backbone 'tiny-random'"):
        ClipEncoder.from_name("tiny-random", weights=path)


def test_a_state_dict_with_a_wrongly_shaped_tensor_raises_weights_mismatch(
    tmp_path: Path, native_state_dict: dict[str, Tensor]
) -> None:
    broken = dict(native_state_dict)
    broken["visual.conv1.weight"] = torch.zeros(64, 3, 4, 4)  # patch size 4 instead of 8
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(WeightsMismatchError):
        ClipEncoder.from_name("tiny-random", weights=path)


@pytest.mark.parametrize("case", ["garbage.pt", "garbage.safetensors", "tensor.pt", "empty-dict.pt"])
def test_an_unreadable_weights_file_raises_a_one_line_normadd_error(case: str, tmp_path: Path) -> None:
    path = tmp_path / case
    if case.startswith("garbage"):
        path.write_bytes(b"this is not a checkpoint " * 8)
    elif case == "tensor.pt":
        torch.save(torch.zeros(3), path)
    else:
        torch.save({}, path)
    with pytest.raises(NormaddError):
        ClipEncoder.from_name("tiny-random", weights=path)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_a_torchscript_checkpoint_of_the_right_model_loads(
    tmp_path: Path, native_state_dict: dict[str, Tensor]
) -> None:
    register_open_clip_configs()
    native = open_clip.create_model("normadd-tiny-random", output_dict=False)
    native.load_state_dict(native_state_dict)
    example = (torch.zeros(1, 3, 56, 56), open_clip.tokenize(["a"]))
    path = tmp_path / "ViT-tiny-openai-format.pt"
    torch.jit.save(torch.jit.trace(native.eval(), example, check_trace=False), str(path))
    encoder = ClipEncoder.from_name("tiny-random", weights=path)
    loaded = encoder.model.state_dict()
    assert torch.equal(loaded["visual.conv1.weight"], native_state_dict["visual.conv1.weight"])


def test_an_unknown_backbone_raises_and_lists_the_known_ones() -> None:
    with pytest.raises(UnknownBackboneError) as caught:
        ClipEncoder.from_name("ViT-Z-99")
    assert "ViT-Z-99" in str(caught.value)
    for name in BACKBONES:
        assert name in str(caught.value)


@pytest.mark.parametrize("layers", [(0,), (1, 5), (-1,)])
def test_layers_out_of_range_raise_weights_mismatch(layers: tuple[int, ...]) -> None:
    with pytest.raises(WeightsMismatchError, match=r"1\.\.4"):
        ClipEncoder.from_name("tiny-random", layers=layers)


# --- (e) big backbones never build without weights ----------------------------


@pytest.fixture
def no_weight_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty Hugging Face and open_clip caches, and no network probe at all."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.cache/clip

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("resolve_weights probed the network although HF_HUB_OFFLINE=1")

    monkeypatch.setattr("normadd.backbone.weights.socket.create_connection", no_network)


@pytest.mark.usefixtures("no_weight_caches")
def test_vit_l_without_weights_offline_says_how_to_get_them() -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve_weights(get_backbone_spec("ViT-L-14-336"))
    message = str(caught.value)
    assert "--weights" in message and WEIGHTS_ENV in message
    assert "ViT-L-14-336" in message
    assert "\n" not in message


@pytest.mark.usefixtures("no_weight_caches")
def test_vit_l_without_weights_fails_before_building_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_build(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the big model was built before its weights were found")

    monkeypatch.setattr(open_clip, "create_model", no_build)
    with pytest.raises(WeightsNotFoundError, match="--weights"):
        ClipEncoder.from_name("ViT-L-14-336")
