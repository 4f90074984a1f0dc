"""NudeNet's 320n detector as an engine: CPU only, nudity only (O3 and O4), bounded threads.

The ONNX weights ship inside the `nudenet` wheel (the optional extra). We run them in our own
onnxruntime session, so the thread count is ours to set, and do our own pre- and post-processing;
nudenet's Python code (and OpenCV, which it imports) is never loaded. onnxruntime, numpy and the
weights are looked up when an engine is built, so this module imports without the extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image as PILImage
from PIL.Image import Image

from moderator.engine.base import Capabilities, EngineRequest, EngineResult
from moderator.errors import ConfigError
from moderator.events.verdict import NONE_APPLYING, Assessment, ModelInfo, category_code
from moderator.settings import NudenetSettings

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MODEL_FILE = "320n.onnx"
INPUT_SIZE = 320
DETECTION_FLOOR = 0.2  # detections below this never reach a decision or a rationale
NMS_IOU = 0.45
TOP_DETECTIONS = 5  # how many detections the rationale and the raw output name

EXPLICIT = "O3: Sexual Content"
NUDITY = "O4: Nudity Content"
EXPLICIT_LABELS = frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"})
NUDITY_LABELS = frozenset({"FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"} | EXPLICIT_LABELS)
_PREFIX = "NudeNet detector (judges nudity only)"


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original image's pixels


def assess(
    detections: Sequence[Detection], *, block_threshold: float, explicit_threshold: float
) -> Assessment:
    """Map detections onto the taxonomy (docs/engines.md has the table).

    Exposed genitalia or anus at or above `explicit_threshold` is O3; exposed female breast,
    buttocks, genitalia or anus at or above `block_threshold` is O4; anything else is Safe.
    `score` stays None: a detector's confidence is not P(Unsafe).
    """
    ranked = sorted(detections, key=lambda d: d.score, reverse=True)
    top = ", ".join(f"{d.label} {d.score:.3f}" for d in ranked[:TOP_DETECTIONS]) or "none"
    for category, labels, threshold, name in (
        (EXPLICIT, EXPLICIT_LABELS, explicit_threshold, "explicit"),
        (NUDITY, NUDITY_LABELS, block_threshold, "block"),
    ):
        hit = next((d for d in ranked if d.label in labels and d.score >= threshold), None)
        if hit is not None:
            reason = f"{hit.label} {hit.score:.3f} reaches the {name} threshold {threshold:.3f}"
            return Assessment(
                rating="Unsafe",
                category=category,
                rationale=f"{_PREFIX}: {reason}. Top detections: {top}.",
            )
    return Assessment(
        rating="Safe",
        category=NONE_APPLYING,
        rationale=(
            f"{_PREFIX}: no exposed-nudity detection reaches the "
            f"block threshold {block_threshold:.3f} or the explicit threshold "
            f"{explicit_threshold:.3f}. Top detections: {top}."
        ),
    )


def preprocess(image: Image, size: int = INPUT_SIZE) -> tuple[NDArray[np.float32], float]:
    """Letterbox to a `size` square (longer side scaled to `size`, black padding right and
    below), RGB in [0, 1], channels first. Also returns the factor from model to image pixels."""
    import numpy as np

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    side = max(rgb.width, rgb.height)
    shrink = size / side
    width, height = max(1, round(rgb.width * shrink)), max(1, round(rgb.height * shrink))
    canvas = PILImage.new("RGB", (size, size))
    canvas.paste(rgb.resize((width, height), PILImage.Resampling.BILINEAR), (0, 0))
    pixels = np.asarray(canvas, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), side / size


def decode(
    output: NDArray[np.float32],
    labels: Sequence[str],
    *,
    scale: float,
    image_size: tuple[int, int],
    floor: float = DETECTION_FLOOR,
    iou: float = NMS_IOU,
) -> list[Detection]:
    """One image's raw output, shape (4 + classes, anchors): centre x, centre y, width, height
    in model pixels, then one score per class. Best class per anchor, confidence floor,
    per-class non-max suppression; boxes scaled to the image and clipped to it."""
    import numpy as np

    class_scores = output[4:]
    classes = class_scores.argmax(axis=0)
    confidence = class_scores.max(axis=0)
    keep = confidence >= floor
    if not keep.any():
        return []
    cx, cy, w, h = output[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * scale
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, image_size[0])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, image_size[1])
    confidence, classes = confidence[keep], classes[keep]
    return [
        Detection(labels[int(classes[i])], float(confidence[i]), _box(boxes[i]))
        for i in _nms(boxes, confidence, classes, iou)
    ]


def _box(row: NDArray[np.floating[Any]]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in row)
    return x1, y1, x2, y2


def _nms(
    boxes: NDArray[np.floating[Any]],
    scores: NDArray[np.floating[Any]],
    classes: NDArray[np.integer[Any]],
    iou: float,
) -> list[int]:
    """Greedy non-max suppression within each class (boxes shifted apart per class)."""
    import numpy as np

    shifted = boxes + (classes.astype(np.float32) * (float(boxes.max()) + 1.0))[:, None]
    areas = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    order = scores.argsort()[::-1]
    kept: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        kept.append(best)
        lo = np.maximum(shifted[best, :2], shifted[rest, :2])
        hi = np.minimum(shifted[best, 2:], shifted[rest, 2:])
        inter = (hi - lo).clip(0).prod(axis=1)
        overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return kept


def model_path() -> Path:
    """The 320n.onnx inside the installed nudenet package, found without importing nudenet."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'nudenet'", name="nudenet")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise ImportError(f"the nudenet package has no {MODEL_FILE}", name="nudenet")
    return path


def onnxruntime_without_telemetry() -> Any:
    """onnxruntime with its telemetry off. Its Linux wheels send usage events to Microsoft
    (and keep a device id under $HOME/.cache) unless ORT_DISABLE_TELEMETRY is set before the
    import; a moderation service sends nothing to third parties, so it is set here whatever
    the environment says, and the API's switch is turned off too."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort


class NudenetEngine:
    """Implements the Engine protocol on NudeNet's 320n ONNX detector.

    One onnxruntime session with `threads` intra-op threads, one inter-op thread and thread
    spinning off, so one call uses about `threads` cores (concurrent calls add up).
    """

    # What `assess` can answer: O3 and O4, from detections alone (the prompt is never read).
    capabilities: ClassVar[Capabilities] = Capabilities(
        categories=(category_code(EXPLICIT), category_code(NUDITY)), reads_policy=False
    )

    def __init__(self, settings: NudenetSettings) -> None:
        ort = onnxruntime_without_telemetry()
        path = model_path()
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle workers would otherwise spin and take CPU from fetching and decoding.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._settings = settings
        self._floor = min(DETECTION_FLOOR, settings.block_threshold, settings.explicit_threshold)
        model_input = self._session.get_inputs()[0]
        self._input_name: str = model_input.name
        self._dynamic_batch = not isinstance(model_input.shape[0], int)
        self._labels = self._read_labels(path)
        self._info = ModelInfo(
            engine="nudenet",
            name="nudenet-320n",
            revision=importlib.metadata.version("nudenet"),
            categories=self.capabilities.categories,
            smoke_test=False,
        )
        self._generation = {
            "block_threshold": settings.block_threshold,
            "explicit_threshold": settings.explicit_threshold,
            "detection_floor": self._floor,
            "nms_iou": NMS_IOU,
        }

    def _read_labels(self, path: Path) -> tuple[str, ...]:
        """Class names in output order, from the model's own metadata."""
        names = self._session.get_modelmeta().custom_metadata_map.get("names")
        by_index = ast.literal_eval(names) if names else {}
        labels = tuple(str(by_index[i]) for i in range(len(by_index)))
        channels = self._session.get_outputs()[0].shape[1]
        if not labels or (isinstance(channels, int) and channels != 4 + len(labels)):
            raise ConfigError(f"{path}: not the NudeNet detector layout this engine decodes")
        return labels

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return INPUT_SIZE

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def session_options(self) -> Any:
        """The session's effective onnxruntime SessionOptions (thread counts included)."""
        return self._session.get_session_options()

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        """One session.run for the whole batch (the model's batch dimension is dynamic)."""
        import numpy as np

        if not batch:
            return []
        prepared = [preprocess(request.image) for request in batch]
        tensors = [tensor for tensor, _ in prepared]
        if self._dynamic_batch:
            outputs = self._session.run(None, {self._input_name: np.stack(tensors)})[0]
        else:
            outputs = np.concatenate(
                [self._session.run(None, {self._input_name: t[None]})[0] for t in tensors]
            )
        results = []
        for request, (_, scale), output in zip(batch, prepared, outputs, strict=True):
            detections = decode(
                output,
                self._labels,
                scale=scale,
                image_size=request.image.size,
                floor=self._floor,
            )
            results.append(self._result(detections))
        return results

    def _result(self, detections: list[Detection]) -> EngineResult:
        assessment = assess(
            detections,
            block_threshold=self._settings.block_threshold,
            explicit_threshold=self._settings.explicit_threshold,
        )
        ranked = sorted(detections, key=lambda d: d.score, reverse=True)[:TOP_DETECTIONS]
        raw = json.dumps(
            [
                {"label": d.label, "score": round(d.score, 4), "box": [round(v) for v in d.box]}
                for d in ranked
            ]
        )
        return EngineResult(
            assessment=assessment, raw_output=raw, generation=dict(self._generation)
        )

    def close(self) -> None:
        self._session = None
