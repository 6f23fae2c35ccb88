"""The model zoo. Importing this package registers every model file."""
from fer_edge.models.registry import (  # noqa: F401
    ModelEntry,
    count_macs,
    count_params,
    create_model,
    forward_problem,
    get_model_entry,
    list_models,
    register_model,
    resolved_model_kwargs,
)

# Model files, imported for their @register_model side effects.
from fer_edge.models import edge  # noqa: F401,E402
from fer_edge.models import notebook_cnns  # noqa: F401,E402
from fer_edge.models import enhanced  # noqa: F401,E402
from fer_edge.models import cbam  # noqa: F401,E402
from fer_edge.models import resnet  # noqa: F401,E402
from fer_edge.models.summary import describe_model, describe_models, format_count  # noqa: F401,E402
