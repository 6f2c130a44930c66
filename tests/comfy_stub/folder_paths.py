"""Stub of ComfyUI's ``folder_paths``."""

from __future__ import annotations

import os

base_path = os.environ.get("COMFY_STUB_BASE", "/tmp/comfy-stub")
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
filename_list_cache: dict = {}


def get_input_directory():
    return os.path.join(base_path, "input")


def get_temp_directory():
    return os.path.join(base_path, "temp")


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name):
    return list(folder_names_and_paths[folder_name][0])
