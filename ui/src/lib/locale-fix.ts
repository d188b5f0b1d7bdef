// Imported first: with the POSIX locale (LANG=C, common on minimal systems and under Xvfb)
// WebKitGTK reports navigator.language as "C", which Intl refuses, and uPlot formats numbers with
// `new Intl.NumberFormat(navigator.language)` when it loads. Fall back to a valid tag.
try {
  new Intl.NumberFormat(navigator.language);
} catch {
  Object.defineProperty(navigator, 'language', { value: 'en-US', configurable: true });
  Object.defineProperty(navigator, 'languages', { value: ['en-US'], configurable: true });
}
export {};
