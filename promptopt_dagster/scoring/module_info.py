"""What every built-in metric module declares to `evaluate`: string predictions beside string references."""

import datasets
import evaluate

_TEXT_PAIR = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


def text_pair_info(description: str, inputs_description: str, citation: str = "") -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description, citation=citation, inputs_description=inputs_description, features=_TEXT_PAIR
    )
