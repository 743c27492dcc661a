-- A faster warm-up for a domain that moves over from another provider with
-- its reputation, and a slower one for a brand-new marketing domain.
-- Copy to scripts/policy.lua (or merge), then `kiln reload`.
return {
  config = {
    warmup = {
      -- Everyone else: the product's default curve.
      identities = {
        ["mail.established.example"] = { curve = { 2000, 10000, 50000, 100000 } },
        ["news.new.example"] = { curve = { 50, 100, 200, 400, 800, 1600 } },
      },
    },
  },
}
