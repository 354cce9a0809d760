"""Cost of one train step of a LLaVA-shaped toy (experiments/LOG.md section 1)."""
import time, sys, torch
torch.set_num_threads(1)
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
G, L, H, D, VL = [int(x) for x in sys.argv[1:6]]
patch=4
vc = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=VL, num_attention_heads=2, image_size=G*patch, patch_size=patch)
tc = LlamaConfig(vocab_size=120, hidden_size=D, intermediate_size=2*D, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H, max_position_embeddings=1024)
cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=5, vision_feature_layer=int(sys.argv[6]), vision_feature_select_strategy="default", projector_hidden_act="gelu")
m = LlavaForConditionalGeneration(cfg)
m.set_attn_implementation("sdpa")
print(sum(p.numel() for p in m.parameters())/1e6, "M params")
B=8; T = 8 + G*G + 40
ids = torch.randint(10, 100, (B, T)); ids[:, 8:8+G*G] = 5
pv = torch.randn(B, 3, G*patch, G*patch)
# check features
with torch.no_grad():
    vt = m.model.vision_tower(pv[:1], output_hidden_states=True)
    emb = m.model.vision_tower.vision_model.pre_layrnorm(m.model.vision_tower.vision_model.embeddings(pv[:1])) if hasattr(m.model.vision_tower,'vision_model') else None
    print(len(vt.hidden_states), (vt.hidden_states[0]-emb).abs().max() if emb is not None else None)
opt = torch.optim.AdamW(m.parameters(), 1e-3)
for i in range(4):
    t=time.time()
    out = m(input_ids=ids, pixel_values=pv, labels=ids)
    out.loss.backward(); opt.step(); opt.zero_grad()
    print(f"step {time.time()-t:.2f}s for B={B} T={T} -> {(time.time()-t)/B*1000:.0f} ms/sample")
