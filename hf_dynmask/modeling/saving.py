"""What every DynMask family needs to be saved with its code: the ``auto_map`` naming its config and each head.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote code).

Each family registers its model classes for their Auto classes (``register_for_auto_class``), so transformers'
``save_pretrained`` copies the family's module and the siblings it imports next to the weights. transformers then
writes only the saved class's own ``auto_map`` entry; :func:`auto_map_of` gives the complete one (the config and every
head), which each family's ``save_pretrained`` writes, so any ``AutoModelFor....from_pretrained(folder,
trust_remote_code=True)`` of the family loads the folder.
"""

from __future__ import annotations

__all__ = ["add_auto_map", "auto_map_of", "code_reference", "register_for_auto_classes"]


def code_reference(cls: type) -> str:
    """``"module_file_stem.ClassName"``: how transformers' ``auto_map`` names code stored next to a model.

    >>> from collections import OrderedDict
    >>> code_reference(OrderedDict)
    'collections.OrderedDict'
    """
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def auto_map_of(config_class: type, auto_class_names: dict[type, str]) -> dict[str, str]:
    """The complete ``auto_map`` of a family: ``AutoConfig`` -> ``config_class`` and each Auto class -> its model.

    Args:
        config_class: the family's config class.
        auto_class_names: model class -> the name of its transformers Auto class (``"AutoModelForMaskedLM"``...).
    """
    return {
        "AutoConfig": code_reference(config_class),
        **{auto_name: code_reference(model_class) for model_class, auto_name in auto_class_names.items()},
    }


def register_for_auto_classes(auto_class_names: dict[type, str]) -> None:
    """``model_class.register_for_auto_class(auto_name)`` for each pair: transformers then ships the code on save."""
    for model_class, auto_name in auto_class_names.items():
        model_class.register_for_auto_class(auto_name)


def add_auto_map(model, config_class: type, auto_class_names: dict[type, str]) -> None:
    """Before ``save_pretrained``: give ``model.config`` its family's complete ``auto_map`` (entries it already has for
    other classes are kept). Models of classes outside ``auto_class_names`` (a user's subclass) are left alone."""
    if type(model) in auto_class_names:
        model.config.auto_map = {
            **(getattr(model.config, "auto_map", None) or {}),
            **auto_map_of(config_class, auto_class_names),
        }
