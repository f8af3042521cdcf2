"""Prompt templates for zero-shot classification: named sets and user-given lists.

A template turns a class name into a caption (``"a photo of a {c}."``). CLIP
(Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", section 3.1.4) averages the text embeddings of many such captions
per class ("prompt ensembling"). The named sets reuse open_clip's copies of the
OpenAI lists (``open_clip.zero_shot_metadata``) instead of retyping them:

* ``openai_imagenet``: the 80 ImageNet templates of the CLIP paper.
* ``simple``: the 7-template subset from OpenAI's prompt-engineering notebook.
* ``photo``: ``"a photo of a {c}."`` alone.
* ``name``: the bare class name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import MappingProxyType

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

__all__ = ["TEMPLATE_SETS", "Template", "TemplateSpec", "resolve_templates"]

Template = Callable[[str], str]
TemplateSpec = str | Sequence[str | Template]

TEMPLATE_SETS: MappingProxyType[str, tuple[Template, ...]] = MappingProxyType(
    {
        "openai_imagenet": tuple(OPENAI_IMAGENET_TEMPLATES),
        "simple": tuple(SIMPLE_IMAGENET_TEMPLATES),
        "photo": (lambda c: f"a photo of a {c}.",),
        "name": (lambda c: c,),
    }
)

_PROBE = "\x00class\x00"  # cannot occur in a real template


def _from_format_string(template: str) -> Template:
    """Wraps a ``{c}`` / ``{}`` format string as a callable, checking it first."""
    try:
        filled = template.format(_PROBE, c=_PROBE)
    except (IndexError, KeyError, ValueError) as err:
        raise ValueError(
            f"template {template!r} is not a valid format string ({err!r}); mark the class "
            "name with {c} or {} and write literal braces as {{ }}"
        ) from err
    if _PROBE not in filled:
        hint = (
            f"; to use the template set {template!r}, pass the name itself, not a list"
            if template in TEMPLATE_SETS
            else ""
        )
        raise ValueError(
            f"template {template!r} has no class-name placeholder; write {{c}} (or {{}}) "
            f"where the class name goes{hint}"
        )
    return lambda c: template.format(c, c=c)


def resolve_templates(spec: TemplateSpec) -> list[Template]:
    """Turns a template specification into a list of ``class name -> caption`` callables.

    Args:
        spec: One of

            * a set name from :data:`TEMPLATE_SETS` (``"openai_imagenet"``,
              ``"simple"``, ``"photo"``, ``"name"``);
            * a single format string containing ``{c}`` or ``{}`` (a string with a
              brace is never a set name);
            * a non-empty sequence of such format strings and/or callables
              ``str -> str`` (e.g. ``lambda c: f"a sketch of a {c}."``).

    Returns:
        A new list of callables, in the given order.

    Raises:
        ValueError: On an unknown set name (the message lists the valid ones), an
            empty sequence, a format string without a class-name placeholder or
            with other fields, a callable whose output does not contain the class
            name or is not a string, or an entry that is neither string nor callable.

    Example:
        >>> [t("dog") for t in resolve_templates(["a photo of a {c}.", "{} art"])]
        ['a photo of a dog.', 'dog art']
        >>> len(resolve_templates("openai_imagenet"))
        80
    """
    if isinstance(spec, str):
        if "{" in spec:
            return [_from_format_string(spec)]
        if spec not in TEMPLATE_SETS:
            raise ValueError(
                f"unknown template set {spec!r}; valid names: {', '.join(TEMPLATE_SETS)} "
                "(or give a list of format strings with {c})"
            )
        return list(TEMPLATE_SETS[spec])
    if not isinstance(spec, Sequence) or len(spec) == 0:
        raise ValueError(
            f"templates must be a set name or a non-empty list of templates, got {spec!r}"
        )
    out: list[Template] = []
    for template in spec:
        if isinstance(template, str):
            out.append(_from_format_string(template))
        elif callable(template):
            filled = template(_PROBE)
            if not isinstance(filled, str) or _PROBE not in filled:
                raise ValueError(
                    f"template callable {template!r} must return a string containing the "
                    f"class name, got {filled!r} for a probe name"
                )
            out.append(template)
        else:
            raise ValueError(
                f"each template must be a format string or a callable, got {type(template)}"
            )
    return out
