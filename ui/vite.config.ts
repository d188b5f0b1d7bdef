// Vite build of the web UI into ui/dist (served by `finetune-studio serve`, bundled by the
// desktop shell). Relative asset paths so the same build works under tauri:// and http://.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022', chunkSizeWarningLimit: 800 },
  server: { proxy: { '/api': 'http://127.0.0.1:7860' } },
});
