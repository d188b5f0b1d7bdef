// Light or dark: the user's choice (kept in localStorage) or else the system's.
export type Theme = 'light' | 'dark';
const KEY = 'studio-theme';
export function initialTheme(): Theme {
  const saved = localStorage.getItem(KEY);
  if (saved === 'light' || saved === 'dark') return saved;
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}
export function applyTheme(t: Theme, save = false) {
  document.documentElement.dataset.theme = t;
  if (save) localStorage.setItem(KEY, t);
}
