# TEMPORARY stub (replaced by the encode branch)
import os, threading
import cv2
def encode(image, fmt):
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode("." + fmt, data)
    return buf.tobytes()
def write_atomic(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f: f.write(data)
    os.replace(tmp, path)
