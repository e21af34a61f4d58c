"""CPU chunk budget of the Recipro-CAM mosaic path: time per call at several memory budgets (see
benchmarks/RESULTS.md). Run: .venv/bin/python -P benchmarks/chunk_budget.py"""
import time, torch, sys
sys.path.insert(0, __import__("os").path.dirname(__file__))
from models import resnet50_sized, benchmark_input
from xaifast.adapters.classifier import ClassifierAdapter
from xaifast.zoo import ConvHeadCNN
from xaifast.algorithms.recipro_cam import recipro_cam
m = resnet50_sized(); x = benchmark_input(2)
ad = ClassifierAdapter(m, target_layer="resnet.encoder.stages.2"); f, _ = ad.forward(x); h = ad.head(f)
small = ConvHeadCNN(10).eval(); xs = torch.randn(16, 3, 128, 128)
ads = ClassifierAdapter(small, target_layer="features"); fs, _ = ads.forward(xs); hs = ads.head(fs)
for name, ff, hh in [("resnet-stage2-b2", f, h), ("convhead-b16-16x16grid", fs, hs)]:
    for mb in [1024, 256, 128, 64, 32]:
        recipro_cam(ff, hh, "1x1", "softmax", memory_budget_mb=mb)
        ts = []
        for _ in range(2):
            t = time.perf_counter(); recipro_cam(ff, hh, "1x1", "softmax", memory_budget_mb=mb); ts.append(time.perf_counter() - t)
        print(name, mb, f"{min(ts):.3f}s")
