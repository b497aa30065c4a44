"""A saved model loads in a fresh process after ``import prunelora_keras`` alone (issue 14, item 14)."""

import subprocess
import sys

from conftest import REPO, clean_env

SAVE = """
import sys
import prunelora_keras
from prunelora_keras.lora import add_lora
from prunelora_keras.models.vit import simple_vit
model = simple_vit(10, (8, 8, 3), 2, 16, 1, 2, 16)
adapted, _ = add_lora(model, ["block0_attn_out", "head"], 2, 4)
model.save(sys.argv[1] + "/vit.keras")
adapted.save(sys.argv[1] + "/lora.keras")
"""

LOAD = """
import sys
import numpy as np
import prunelora_keras  # the only import: it registers every custom layer
import keras
x = np.zeros((1, 8, 8, 3), "float32")
for name in ("vit", "lora"):
    model = keras.saving.load_model(sys.argv[1] + "/" + name + ".keras")
    print(name, type(model.get_layer("head")).__name__, model(x).shape)
"""


def test_saved_models_load_after_importing_the_package_only(tmp_path):
    for code in (SAVE, LOAD):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=clean_env(), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["vit Dense (1, 10)", "lora LoRADense (1, 10)"]
