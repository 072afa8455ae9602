"""Post-build fixes of the modelDescription.xml that pythonfmu generates.

pythonfmu writes variables without units, min/max or nominal, only Outputs in ModelStructure (no
InitialUnknowns), a random GUID, start values with 16 significant digits (not always the same
double) and capability flags that do not match this FMU. Everything added here comes from the
signal table (twin_core.signals) through fmu.variables, so ``fmpy.validate_fmu`` finds no problem
and Simulink/OpenModelica show SI units with degC/h/mol/L display units.
"""

from __future__ import annotations

import math
from xml.etree.ElementTree import Element, SubElement

from fmu.variables import FmiVariable
from twin_core.signals.table import DISPLAY_UNITS, UNITS

CO_SIMULATION_FLAGS = {
    # The Python FMU needs an outside CPython 3.x with numpy and onnxruntime to run (docs/fmu.md): an
    # execution tool in the sense of FMI 2.0. The native FMU overrides this with "false".
    "needsExecutionTool": "true",
    "canHandleVariableCommunicationStepSize": "true",
    "canInterpolateInputs": "false",
    "maxOutputDerivativeOrder": "0",
    "canRunAsynchronuously": "false",
    "canBeInstantiatedOnlyOncePerProcess": "false",
    "canNotUseMemoryManagementFunctions": "true",
    "canGetAndSetFMUstate": "true",
    "canSerializeFMUstate": "true",
    "providesDirectionalDerivative": "false",
}

# Child order required by the FMI 2.0 schema (fmiModelDescription).
_ORDER = ("ModelExchange", "CoSimulation", "UnitDefinitions", "TypeDefinitions", "LogCategories",
          "DefaultExperiment", "VendorAnnotations", "ModelVariables", "ModelStructure")


def _num(v: float) -> str:
    """A double as the shortest text that reads back to the same value."""
    return repr(float(v))


def unit_definitions(variables: tuple[FmiVariable, ...]) -> Element:
    """<UnitDefinitions> for the units the variables use, with their display units."""
    used = sorted({v.signal.unit for v in variables if v.type == "Real"})
    root = Element("UnitDefinitions")
    for name in used:
        unit = SubElement(root, "Unit", name=name)
        SubElement(unit, "BaseUnit", {k: str(e) for k, e in UNITS[name].items()})
        for dname, (base, factor, offset) in DISPLAY_UNITS.items():
            if base == name:
                attrs = {"name": dname}
                if factor != 1.0:
                    attrs["factor"] = _num(factor)
                if offset != 0.0:
                    attrs["offset"] = _num(offset)
                SubElement(unit, "DisplayUnit", attrs)
    return root


def _type_element(sv: Element) -> Element:
    for child in sv:
        if child.tag in ("Real", "Integer", "Boolean", "String", "Enumeration"):
            return child
    raise ValueError(f"variable {sv.get('name')} has no type element")


def finalize(root: Element, variables: tuple[FmiVariable, ...], *, starts: dict[str, float], guid: str,
             model_identifier: str, generation_tool: str, tolerance: float,
             flags: dict[str, str] | None = None, source_files: tuple[str, ...] = ()) -> Element:
    """Fix pythonfmu's model description ``root`` in place and return it.

    ``starts``: the exact start value of every Real parameter and input (pythonfmu prints 16
    significant digits, which do not always read back to the same double). ``flags``: capability
    flags that differ from :data:`CO_SIMULATION_FLAGS` (the native FMU's); ``source_files``: the C
    files under ``sources/`` a tool compiles (FMI 2.0 ``<SourceFiles>``; none for the Python FMU).

    Outputs declare ``dependencies=""``: no output depends directly on an input (co-simulation, no
    direct feedthrough: outputs change only in doStep), so a tool closing T back into T_jacket sees
    no algebraic loop. Initial unknowns keep the default (they may depend on every known).
    """
    root.set("guid", "{" + guid + "}")
    root.set("modelName", model_identifier)
    root.set("generationTool", generation_tool)

    cs = root.find("CoSimulation")
    if cs is None:
        raise ValueError("no CoSimulation element")
    cs.attrib.clear()
    cs.set("modelIdentifier", model_identifier)
    for k, v in {**CO_SIMULATION_FLAGS, **(flags or {})}.items():
        cs.set(k, v)
    for old in cs.findall("SourceFiles"):
        cs.remove(old)
    if source_files:
        files = SubElement(cs, "SourceFiles")
        for name in source_files:
            SubElement(files, "File", name=name)

    for old in root.findall("UnitDefinitions"):
        root.remove(old)
    root.append(unit_definitions(variables))

    experiment = root.find("DefaultExperiment")
    if experiment is not None:
        experiment.set("tolerance", _num(tolerance))

    svs = root.find("ModelVariables")
    if svs is None:
        raise ValueError("no ModelVariables element")
    by_name = {v.name: v for v in variables}
    index: dict[str, int] = {}
    for i, sv in enumerate(svs.findall("ScalarVariable"), start=1):
        name = sv.get("name", "")
        var = by_name.get(name)
        if var is None:
            raise ValueError(f"variable {name!r} is not in the signal table")
        if int(sv.get("valueReference", "-1")) != var.vr:
            raise ValueError(f"variable {name}: value reference {sv.get('valueReference')} != {var.vr}")
        index[name] = i
        sig = var.signal
        t = _type_element(sv)
        if var.type == "Real":
            t.set("unit", sig.unit)
            if sig.display_unit:
                t.set("displayUnit", sig.display_unit)
            if math.isfinite(var.min):
                t.set("min", _num(var.min))
            if math.isfinite(var.max):
                t.set("max", _num(var.max))
            t.set("nominal", _num(sig.nominal))
            if "start" in t.attrib:
                t.set("start", _num(starts[name]))
        elif var.type == "Integer":
            if math.isfinite(var.min):
                t.set("min", str(int(var.min)))
            if math.isfinite(var.max):
                t.set("max", str(int(var.max)))

    structure = root.find("ModelStructure")
    if structure is None:
        structure = SubElement(root, "ModelStructure")
    structure.clear()
    outputs = [v for v in variables if v.causality == "output"]
    if outputs:
        out_el = SubElement(structure, "Outputs")
        for v in outputs:
            SubElement(out_el, "Unknown", index=str(index[v.name]), dependencies="")
        init_el = SubElement(structure, "InitialUnknowns")
        # FMI 2.0: every output with initial="calculated" is an initial unknown.
        for v in outputs:
            if v.initial in ("calculated", "approx"):
                SubElement(init_el, "Unknown", index=str(index[v.name]))

    children = sorted(list(root), key=lambda e: _ORDER.index(e.tag) if e.tag in _ORDER else len(_ORDER))
    for c in list(root):
        root.remove(c)
    for c in children:
        root.append(c)
    return root
