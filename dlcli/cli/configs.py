"""``dlcli init`` and ``dlcli config``: write and check configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dlcli.cli.base import NonEmptyPath, _set_option, cli, complete_datasets, dlcli_command
from dlcli.report import Reporter, counted

# --- init / config: write and check configs ---------------------------------------------------


@cli.command()
@click.argument("path", required=False, type=NonEmptyPath(path_type=Path))
@click.option(
    "--template",
    type=click.Choice(["mlp", "cnn"]),
    default="mlp",
    show_default=True,
    help="mlp: the KotlinDL seed model; cnn: a small convolutional network.",
)
@click.option(
    "--dataset",
    shell_complete=complete_datasets,
    default="fashion-mnist",
    show_default=True,
    help="A registry dataset (dlcli download --list).",
)
@click.option("--force", is_flag=True, help="Overwrite PATH when it exists.")
@click.option(
    "--from",
    "data",
    # What is there is the data reader's to judge: a missing DATA is exit 3, as a device or an
    # unreadable file is, and as evaluate --data and data check say (click said exit 2).
    type=NonEmptyPath(path_type=Path),
    metavar="DATA",
    help="Your own data: a folder of class folders (or one holding train/ and test/), a "
    "path,label CSV, an .npz or an IDX archive; classes, input shape and model are filled in.",
)
@dlcli_command
def init(
    reporter: Reporter,
    path: Path | None,
    template: str,
    dataset: str,
    force: bool,
    data: Path | None,
) -> dict[str, Any]:
    """Write a commented starter config to PATH that trains as is.

    PATH defaults to DATASET-TEMPLATE.yaml in the current directory (with --from DATA:
    DATA's name.yaml). With --from, the template defaults to mlp for small greyscale images
    and cnn for colour or larger ones.
    """
    from dlcli.config_tools import write_starter
    from dlcli.untrusted import shell_word

    ctx = click.get_current_context()
    given = ctx.get_parameter_source("template") is not click.core.ParameterSource.DEFAULT
    if path is None:
        name = data.resolve().name if data is not None else f"{dataset}-{template}"
        path = Path(f"{name}.yaml")
    write_starter(
        path, template=template, dataset=dataset, force=force, data=data, template_given=given
    )
    command = f"dlcli train {shell_word(path)}"  # pasted into a shell as it is
    reporter.result_line(f"wrote {path}; train it with: {command}")
    source = {"dataset": dataset} if data is None else {"data": str(data)}
    return {"path": str(path), "template": template, **source, "command": command}


@cli.group(name="config")
def config_group() -> None:
    """Show a config resolved, validate it, or print its schema.

    validate is made for pre-commit hooks and the first step of a CI job.
    """


@config_group.command(name="show")
@click.argument("config", type=NonEmptyPath(dir_okay=False, path_type=Path))
@_set_option
@dlcli_command
def config_show(reporter: Reporter, config: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    """Print a config resolved, each key's doc as a comment.

    CONFIG with its defaults filled in and --set applied, as YAML that loads back to the same
    config; --json prints it as a JSON document.
    """
    from dlcli.config import load_config, to_dict
    from dlcli.config_tools import commented_yaml

    cfg = load_config(config, overrides)
    if not reporter.json_mode:
        reporter.write(commented_yaml(cfg, source=str(config)))
    return to_dict(cfg)


@config_group.command(name="validate")
@click.argument("config", type=NonEmptyPath(dir_okay=False, path_type=Path))
@_set_option
@click.option(
    "--no-data",
    is_flag=True,
    help="Check the config and the model only, without reading the data files.",
)
@dlcli_command
def config_validate(
    reporter: Reporter, config: Path, overrides: tuple[str, ...], no_data: bool
) -> dict[str, Any]:
    """Check a config and its data as train would.

    Exit 0: CONFIG is valid; 2: it is not.

    Checks the keys and values, builds the model (a kernel larger than its input, a missing
    flatten or a last layer with the wrong number of classes is caught), and reads the data
    files: they must exist, be readable archives, and match model.input_shape (--no-data
    skips the data).
    """
    from dlcli.config_tools import validate_config

    result = validate_config(config, overrides, check_data=not no_data)
    reporter.result_line(
        f"{config}: valid ({counted(result['layers'], 'layer')}, "
        f"{counted(result['total_params'], 'parameter')}, "
        f"{counted(result['num_classes'], 'class', 'classes')})"
    )
    return result


@config_group.command(name="schema")
@dlcli_command
def config_schema(reporter: Reporter) -> dict[str, Any]:
    """Print the JSON Schema of a config file.

    Editors use it for completion and checking.

    \b
    Save it and name it in the config's first line:
      dlcli config schema > dlcli.schema.json
      # yaml-language-server: $schema=dlcli.schema.json
    """
    import json

    from dlcli.schema import config_schema as make_schema

    schema = make_schema()
    if not reporter.json_mode:
        reporter.write(json.dumps(schema, indent=2) + "\n")
    return schema
